package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

func TestDecideRecovery(t *testing.T) {
	snap := vm.Snapshot{ID: "py@3.12", Provider: "sim", Path: "sim://py"}
	configured := map[vm.StackKey]vm.Snapshot{testKey: snap}
	record := func(st state.State, key vm.StackKey, s vm.Snapshot) state.Record {
		return state.Record{Instance: vm.Instance{ID: "x", Stack: key, Snapshot: s}, State: st}
	}
	tests := []struct {
		name        string
		rec         state.Record
		canReattach bool
		want        recoveryAction
	}{
		{"handed out is kept", record(state.HandedOut, unusedKey, snap), true, actionKeep},
		{"handed out kept without reattach", record(state.HandedOut, testKey, snap), false, actionKeep},
		{"warm configured is adopted", record(state.Warm, testKey, snap), true, actionAdopt},
		{"warm without reattach is destroyed", record(state.Warm, testKey, snap), false, actionDestroy},
		{"warm of removed stack is destroyed", record(state.Warm, unusedKey, snap), true, actionDestroy},
		{"warm of old snapshot is destroyed", record(state.Warm, testKey, vm.Snapshot{Path: "old"}), true, actionDestroy},
		{"restoring is destroyed", record(state.Restoring, testKey, snap), true, actionDestroy},
		{"failed destroy is retried", record(state.DestroyFailed, testKey, snap), true, actionDestroy},
		{"unreadable record is destroyed", record("", vm.StackKey{}, vm.Snapshot{}), true, actionDestroy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := decideRecovery(tt.rec, configured, tt.canReattach)
			if got != tt.want {
				t.Errorf("action = %q, want %q", got, tt.want)
			}
			if got == actionDestroy && reason == "" {
				t.Error("destroy without a reason")
			}
		})
	}
}

// reattachingSim is a sim provider that can reattach to the VMs it still
// runs, standing in for a VMM provider whose VMs outlived a daemon.
type reattachingSim struct {
	*sim.Provider
}

func (p reattachingSim) Reattach(_ context.Context, inst vm.Instance) error {
	if !slices.Contains(p.Live(), inst.ID) {
		return fmt.Errorf("VM %s is not running", inst.ID)
	}
	return nil
}

func TestStartRecoversRecordedVMs(t *testing.T) {
	dir := t.TempDir()
	text := testConfig(t, dir)
	cfg, err := ParseConfig("t.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	pySnap := cfg.Stacks[0].snapshot("sim")

	// Records of a previous run, with the VMs that are still running.
	store, err := state.Open(cfg.StateDir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(id string, st state.State, key vm.StackKey, snap vm.Snapshot, running bool) {
		inst := vm.Instance{ID: id, Stack: key, Snapshot: snap}
		if running {
			inst, err = p.Restore(ctx, id, key, snap)
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := store.Put(state.Record{Instance: inst, State: st}); err != nil {
			t.Fatal(err)
		}
	}
	put("warm-alive", state.Warm, testKey, pySnap, true)
	put("warm-dead", state.Warm, testKey, pySnap, true)
	p.Kill("warm-dead")
	put("warm-gone", state.Warm, testKey, pySnap, false)
	put("warm-removed", state.Warm, unusedKey, pySnap, true)
	put("warm-oldsnap", state.Warm, testKey, vm.Snapshot{ID: "old", Provider: "sim", Path: "sim://old"}, true)
	put("restoring", state.Restoring, testKey, pySnap, true)
	put("restoring-gone", state.Restoring, testKey, pySnap, false)
	put("handed", state.HandedOut, testKey, pySnap, true)
	put("destroy-failed", state.DestroyFailed, testKey, pySnap, true)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	logs := &syncBuffer{}
	d, err := Start(ctx, cfg, Options{Logger: newTestLogger(logs), Provider: reattachingSim{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(ctx)

	live := p.Live()
	for _, id := range []string{"warm-alive", "handed"} {
		if !slices.Contains(live, id) {
			t.Errorf("%s was destroyed, want it kept", id)
		}
	}
	for _, id := range []string{"warm-dead", "warm-removed", "warm-oldsnap", "restoring", "destroy-failed"} {
		if slices.Contains(live, id) {
			t.Errorf("%s still runs, want it destroyed", id)
		}
		if _, err := d.store.Get(id); err == nil {
			t.Errorf("%s is still recorded", id)
		}
	}
	for _, id := range []string{"restoring-gone", "warm-gone"} {
		if _, err := d.store.Get(id); err == nil {
			t.Errorf("%s is still recorded", id)
		}
	}

	rec, err := d.store.Get("warm-alive")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != state.Warm {
		t.Errorf("warm-alive state = %q, want warm", rec.State)
	}
	handed, err := d.store.ListState(state.HandedOut)
	if err != nil {
		t.Fatal(err)
	}
	if len(handed) != 1 || handed[0].ID != "handed" {
		t.Errorf("handed-out records = %+v, want only handed", handed)
	}

	text = logs.String()
	for _, want := range []string{
		"recovery: adopted warm VM", "vm_id=warm-alive",
		"recovery: kept handed-out VM", "vm_id=handed",
		"recovery: destroyed VM", "stack no longer configured", "restore interrupted",
		"snapshot changed", "earlier destroy failed", "unhealthy: check", "unhealthy: reattach",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("recovery log lacks %q", want)
		}
	}

	// The adopted VM belongs to the pool now, so closing the pool destroys
	// it, while the handed-out VM keeps running.
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	live = p.Live()
	if slices.Contains(live, "warm-alive") {
		t.Error("adopted VM survived the pool's close")
	}
	if !slices.Contains(live, "handed") {
		t.Error("handed-out VM was destroyed by the pool's close")
	}
}

func TestRecoveryKeepsMaxDepth(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseConfig("t.yaml", []byte(testConfig(t, dir)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	pySnap := cfg.Stacks[0].snapshot("sim")
	_, maxDepth := cfg.Stacks[0].Depth(cfg.Pool)

	// More warm VMs of one stack than its max depth, as two restarts that
	// each refilled before adopting could leave.
	store, err := state.Open(cfg.StateDir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	recorded := maxDepth + 2
	for i := range recorded {
		inst, err := p.Restore(ctx, fmt.Sprintf("warm-%d", i), testKey, pySnap)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Put(state.Record{Instance: inst, State: state.Warm}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	d, err := Start(ctx, cfg, Options{Logger: newTestLogger(&syncBuffer{}), Provider: reattachingSim{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(ctx)

	// The config's other stack fills as usual, so only the VMs of testKey
	// count: the recorded ones and any the refiller restores for it.
	ofStack := func(ids []string) []string {
		var out []string
		for _, id := range ids {
			if strings.HasPrefix(id, "warm-") || strings.HasPrefix(id, testKey.Name+"-") {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(ofStack(p.Live())) > maxDepth && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if live := ofStack(p.Live()); len(live) != maxDepth {
		t.Errorf("%d VMs of %s run after recovery, want max depth %d: %v", len(live), testKey, maxDepth, live)
	}
	if restored := ofStack(p.Restored()); len(restored) != recorded {
		t.Errorf("%d VMs of %s restored in all, want the %d recorded ones and no refill: %v",
			len(restored), testKey, recorded, restored)
	}
}
