package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"gopkg.in/yaml.v3"

	"github.com/warmpool/warmpool/vm"
)

var testKey = vm.StackKey{Name: "node", Version: "22", VCPUs: 1, MemoryMiB: 256}

func newProvider(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func TestRestoreCheckDestroy(t *testing.T) {
	p := newProvider(t, Config{})
	ctx := context.Background()

	inst, err := p.Restore(ctx, "vm-1", testKey, vm.Snapshot{ID: "snap"})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if inst.ID != "vm-1" || inst.Stack != testKey || inst.Snapshot.ID != "snap" {
		t.Errorf("Restore returned %+v", inst)
	}
	if err := p.Check(inst); err != nil {
		t.Errorf("Check of a running VM: %v", err)
	}
	if err := p.Probe(ctx, inst); err != nil {
		t.Errorf("Probe of a running VM: %v", err)
	}
	if err := p.Destroy(ctx, inst); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if err := p.Check(inst); err == nil {
		t.Error("Check of a destroyed VM returned nil")
	}
	if got := p.Live(); len(got) != 0 {
		t.Errorf("Live() = %v, want none", got)
	}
	if got := p.Restored(); !slices.Equal(got, []string{"vm-1"}) {
		t.Errorf("Restored() = %v", got)
	}
	if got := p.Destroyed(); !slices.Equal(got, []string{"vm-1"}) {
		t.Errorf("Destroyed() = %v", got)
	}
}

func TestRestoreRejectsBadInput(t *testing.T) {
	p := newProvider(t, Config{})
	if _, err := p.Restore(context.Background(), "../x", testKey, vm.Snapshot{}); !errors.Is(err, vm.ErrInvalidID) {
		t.Errorf("Restore with a bad id: err = %v, want ErrInvalidID", err)
	}
	if _, err := p.Restore(context.Background(), "vm-1", vm.StackKey{}, vm.Snapshot{}); err == nil {
		t.Error("Restore with an empty key returned nil")
	}
	if _, err := p.Restore(context.Background(), "vm-1", testKey, vm.Snapshot{}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Restore(context.Background(), "vm-1", testKey, vm.Snapshot{}); err == nil {
		t.Error("Restore of a running id returned nil")
	}
	if got := p.Restored(); len(got) != 1 {
		t.Errorf("Restored() = %v, want one id", got)
	}
}

func TestKillFailsCheckAndProbe(t *testing.T) {
	p := newProvider(t, Config{})
	inst, err := p.Restore(context.Background(), "vm-1", testKey, vm.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Kill("vm-1") {
		t.Error("Kill of a running VM returned false")
	}
	if p.Kill("vm-2") {
		t.Error("Kill of an unknown VM returned true")
	}
	if err := p.Check(inst); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Check after Kill = %v, want a process exited error", err)
	}
	if err := p.Probe(context.Background(), inst); err == nil {
		t.Error("Probe after Kill returned nil")
	}
}

func TestDoubleDestroyRecorded(t *testing.T) {
	p := newProvider(t, Config{})
	ctx := context.Background()
	inst, err := p.Restore(ctx, "vm-1", testKey, vm.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.Destroy(ctx, inst); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
	}
	if err := p.Destroy(ctx, vm.Instance{ID: "never-restored"}); err != nil {
		t.Errorf("Destroy of an unknown VM = %v, want nil", err)
	}
	if got := p.DoubleDestroys(); !slices.Equal(got, []string{"vm-1"}) {
		t.Errorf("DoubleDestroys() = %v, want [vm-1]", got)
	}
}

func TestInjectedFailures(t *testing.T) {
	p := newProvider(t, Config{RestoreFailureRate: 1, DestroyFailureRate: 1})
	ctx := context.Background()
	if _, err := p.Restore(ctx, "vm-1", testKey, vm.Snapshot{}); !errors.Is(err, ErrInjected) {
		t.Errorf("Restore err = %v, want ErrInjected", err)
	}
	if got := p.Restored(); len(got) != 0 {
		t.Errorf("failed restore is in the ledger: %v", got)
	}

	q := newProvider(t, Config{DestroyFailureRate: 1})
	inst, err := q.Restore(ctx, "vm-2", testKey, vm.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Destroy(ctx, inst); !errors.Is(err, ErrInjected) {
		t.Errorf("Destroy err = %v, want ErrInjected", err)
	}
	if got := q.Live(); !slices.Equal(got, []string{"vm-2"}) {
		t.Errorf("Live() after a failed destroy = %v, want [vm-2]", got)
	}
}

func TestHangBlocksUntilContextDone(t *testing.T) {
	p := newProvider(t, Config{HangRate: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.Restore(ctx, "vm-1", testKey, vm.Snapshot{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("hung Restore returned before cancel: %v", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("hung Restore err = %v, want context.Canceled", err)
	}
	if got := p.Live(); len(got) != 0 {
		t.Errorf("hung restore left VMs running: %v", got)
	}
}

func TestLatencyFollowsClock(t *testing.T) {
	clock := clockwork.NewFakeClock()
	p := newProvider(t, Config{RestoreLatency: time.Second, Clock: clock})
	done := make(chan error, 1)
	go func() {
		_, err := p.Restore(context.Background(), "vm-1", testKey, vm.Snapshot{})
		done <- err
	}()
	if err := clock.BlockUntilContext(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Restore returned before its latency passed: %v", err)
	default:
	}
	clock.Advance(time.Second)
	if err := <-done; err != nil {
		t.Errorf("Restore: %v", err)
	}
}

func TestProbeHonoursContext(t *testing.T) {
	p := newProvider(t, Config{ProbeLatency: time.Hour})
	inst, err := p.Restore(context.Background(), "vm-1", testKey, vm.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Probe(ctx, inst); !errors.Is(err, context.Canceled) {
		t.Errorf("Probe with a cancelled ctx = %v, want context.Canceled", err)
	}
}

func TestSeedRepeatsFaults(t *testing.T) {
	run := func() []bool {
		p := newProvider(t, Config{RestoreFailureRate: 0.5, Seed: 42})
		var failed []bool
		for i := range 20 {
			_, err := p.Restore(context.Background(), fmt.Sprintf("vm-%d", i), testKey, vm.Snapshot{})
			failed = append(failed, err != nil)
		}
		return failed
	}
	first, second := run(), run()
	if !slices.Equal(first, second) {
		t.Errorf("same seed gave different faults:\n%v\n%v", first, second)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative latency", Config{RestoreLatency: -1}, "restore_latency"},
		{"negative jitter", Config{DestroyJitter: -1}, "destroy_jitter"},
		{"rate above one", Config{RestoreFailureRate: 1.5}, "restore_failure_rate"},
		{"negative rate", Config{HangRate: -0.1}, "hang_rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.want)
			}
			if _, err := New(tt.cfg); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

func TestConfigYAMLKeys(t *testing.T) {
	src := "restore_latency: 50ms\nrestore_jitter: 10ms\ndestroy_failure_rate: 0.25\nhang_rate: 0.01\nseed: 7\n"
	var cfg Config
	if err := yaml.Unmarshal([]byte(src), &cfg); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	want := Config{RestoreLatency: 50 * time.Millisecond, RestoreJitter: 10 * time.Millisecond,
		DestroyFailureRate: 0.25, HangRate: 0.01, Seed: 7}
	if cfg != want {
		t.Errorf("decoded %+v, want %+v", cfg, want)
	}
}
