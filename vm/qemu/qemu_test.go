package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/guest"
	"github.com/warmpool/warmpool/vm"
)

// testGuest builds the guest once per machine into a shared temporary
// directory; guest.Build skips the work when its inputs are unchanged.
func testGuest(t *testing.T) guest.Guest {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testenv.Skipf(t, "qemu-system-x86_64 not found in PATH; install Debian's qemu-system-x86 to run this test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g, err := guest.Build(ctx, guest.Options{OutDir: filepath.Join(os.TempDir(), "warmpool-test-guest")})
	if err != nil {
		t.Fatalf("build guest: %v", err)
	}
	return g
}

// testAccel is the acceleration for end-to-end tests: WARMPOOL_TEST_ACCEL,
// or tcg, which works on every host.
func testAccel() string {
	if accel := os.Getenv("WARMPOOL_TEST_ACCEL"); accel != "" {
		return accel
	}
	return AccelTCG
}

func newTestProvider(t *testing.T, stateDir string, g guest.Guest, detached bool) *Provider {
	t.Helper()
	p, err := New(Config{
		StateDir: stateDir,
		Accel:    testAccel(),
		Kernel:   g.Kernel,
		Initrd:   g.Initrd,
		Detached: detached,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// createTestTemplate makes a template of a 1-vCPU, 128 MiB guest.
func createTestTemplate(t *testing.T, p *Provider) (vm.StackKey, vm.Snapshot) {
	t.Helper()
	key := vm.StackKey{Name: "e2e", Version: "1", VCPUs: 1, MemoryMiB: 128}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tmpl, err := p.CreateTemplate(ctx, key, filepath.Join(t.TempDir(), "snapshot"))
	if err != nil {
		t.Fatalf("CreateTemplate: %v", err)
	}
	t.Logf("template: accel %s, boot %s, save %s", tmpl.Metadata.Accel, tmpl.BootTime, tmpl.SaveTime)
	return key, tmpl.Snapshot
}

func checkSaysExited(p *Provider, inst vm.Instance) bool {
	err := p.Check(inst)
	return err != nil && strings.Contains(err.Error(), "exited")
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read state dir: %v", err)
	}
	for _, e := range entries {
		t.Errorf("left in state dir: %s", e.Name())
	}
}

func TestProviderEndToEnd(t *testing.T) {
	g := testGuest(t)
	stateDir := t.TempDir()
	p := newTestProvider(t, stateDir, g, false)
	key, snap := createTestTemplate(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Restore several clones in parallel.
	const clones = 3
	instances := make([]vm.Instance, clones)
	errs := make([]error, clones)
	var wg sync.WaitGroup
	for i := range clones {
		wg.Go(func() {
			start := time.Now()
			instances[i], errs[i] = p.Restore(ctx, fmt.Sprintf("clone-%d", i), key, snap)
			t.Logf("clone-%d restored in %s", i, time.Since(start))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Restore clone-%d: %v", i, err)
		}
	}
	defer func() {
		for _, inst := range instances {
			p.Destroy(context.Background(), inst)
		}
	}()

	for _, inst := range instances {
		if err := p.Check(inst); err != nil {
			t.Errorf("Check %s after restore: %v", inst.ID, err)
		}
		probeCtx, cancelProbe := context.WithTimeout(ctx, 5*time.Second)
		if err := p.Probe(probeCtx, inst); err != nil {
			t.Errorf("Probe %s: %v", inst.ID, err)
		}
		cancelProbe()
		pss, err := p.MemoryPSS(inst)
		if err != nil {
			t.Errorf("MemoryPSS %s: %v", inst.ID, err)
		}
		if pss <= 0 {
			t.Errorf("MemoryPSS %s = %d, want > 0", inst.ID, pss)
		}
	}

	// A guest keeps sending heartbeats after the restore, so Check still
	// passes after more than heartbeat_max_age.
	time.Sleep(p.cfg.HeartbeatMaxAge + 200*time.Millisecond)
	if err := p.Check(instances[0]); err != nil {
		t.Errorf("Check %s after heartbeat_max_age: %v", instances[0].ID, err)
	}

	// Killing QEMU makes Check fail once the goroutine waiting on the
	// process has reaped it.
	killed := instances[1]
	if err := syscall.Kill(killed.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill qemu: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	// The agent connection may close before the process is reaped, so
	// wait for the error that names the exit.
	for !checkSaysExited(p, killed) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Check(killed); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Check of killed VM = %v, want an error saying qemu exited", err)
	}
	if err := p.Check(instances[2]); err != nil {
		t.Errorf("Check %s next to the killed VM: %v", instances[2].ID, err)
	}

	for _, inst := range instances {
		if err := p.Destroy(ctx, inst); err != nil {
			t.Errorf("Destroy %s: %v", inst.ID, err)
		}
		if processExists(inst.PID) {
			t.Errorf("qemu pid %d of %s still exists after Destroy", inst.PID, inst.ID)
		}
		if err := p.Check(inst); err == nil {
			t.Errorf("Check %s after Destroy returned nil", inst.ID)
		}
	}
	// Destroying twice, or an id that never existed, is not an error.
	if err := p.Destroy(ctx, instances[0]); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if err := p.Destroy(ctx, vm.Instance{ID: "never-restored"}); err != nil {
		t.Errorf("Destroy of unknown id: %v", err)
	}
	assertEmptyDir(t, stateDir)

	// The snapshot stays intact for further clones.
	if _, err := ReadMetadata(snap.Path); err != nil {
		t.Errorf("snapshot after clones: %v", err)
	}
}

// TestClonesReadDifferentRandom checks that two clones of one template
// read different bytes from the guest's getrandom right after Restore.
//
// NOTE: this test passes without the provider's reseed too. Linux 6.1
// reseeds its CRNG on the first read when the last reseed is older than
// max(1s, uptime/2) during the first two minutes of uptime, and the test
// template is seconds old. It guards the property, and Restore succeeding
// shows that the guest's RNDADDENTROPY and RNDRESEEDCRNG ioctls worked.
func TestClonesReadDifferentRandom(t *testing.T) {
	g := testGuest(t)
	stateDir := t.TempDir()
	p := newTestProvider(t, stateDir, g, false)
	key, snap := createTestTemplate(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var random [2][]byte
	for i := range random {
		inst, err := p.Restore(ctx, fmt.Sprintf("rng-%d", i), key, snap)
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		defer p.Destroy(context.Background(), inst)
		m, err := p.lookup(inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		random[i], err = m.agent.random(ctx)
		if err != nil {
			t.Fatalf("random from %s: %v", inst.ID, err)
		}
	}
	if bytes.Equal(random[0], random[1]) {
		t.Errorf("two clones read the same random bytes %x", random[0])
	}
}

func TestRestoreRejectsBadInput(t *testing.T) {
	g := testGuest(t)
	stateDir := t.TempDir()
	p := newTestProvider(t, stateDir, g, false)
	key, snap := createTestTemplate(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	bigger := key
	bigger.MemoryMiB = 256
	moreCPUs := key
	moreCPUs.VCPUs = 2
	otherProvider := snap
	otherProvider.Provider = "firecracker"
	relative := snap
	relative.Path = "snapshot"
	missing := snap
	missing.Path = filepath.Join(t.TempDir(), "missing")

	cases := []struct {
		name string
		id   string
		key  vm.StackKey
		snap vm.Snapshot
		want string
	}{
		{"memory differs", "vm-1", bigger, snap, "does not match"},
		{"vcpus differ", "vm-2", moreCPUs, snap, "does not match"},
		{"invalid id", "../escape", key, snap, "invalid VM id"},
		{"invalid key", "vm-3", vm.StackKey{Name: "x"}, snap, "invalid version"},
		{"other provider", "vm-4", key, otherProvider, "made by provider"},
		{"relative path", "vm-5", key, relative, "absolute"},
		{"missing snapshot", "vm-6", key, missing, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Restore(ctx, tc.id, tc.key, tc.snap)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Restore = %v, want error containing %q", err, tc.want)
			}
		})
	}
	assertEmptyDir(t, stateDir)

	// An id in use is rejected without touching the running VM.
	inst, err := p.Restore(ctx, "in-use", key, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer p.Destroy(context.Background(), inst)
	if _, err := p.Restore(ctx, "in-use", key, snap); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("second Restore with the same id = %v, want an error saying it is in use", err)
	}
	if err := p.Check(inst); err != nil {
		t.Errorf("Check after rejected duplicate: %v", err)
	}
}

func TestDetachedReattachAndDestroyByID(t *testing.T) {
	g := testGuest(t)
	stateDir := t.TempDir()
	first := newTestProvider(t, stateDir, g, true)
	key, snap := createTestTemplate(t, first)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	inst, err := first.Restore(ctx, "detached-1", key, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// Whatever happens below, kill the detached QEMU by its recorded pid.
	defer func() {
		if verifyProcess(inst.PID, inst.ID) == nil {
			syscall.Kill(inst.PID, syscall.SIGKILL)
		}
	}()

	// A second provider on the same state dir plays a restarted daemon,
	// which has only the VM's record.
	second := newTestProvider(t, stateDir, g, true)
	if err := second.Check(inst); err == nil {
		t.Errorf("Check before Reattach returned nil")
	}
	// Release the first provider's connections, as a process exit would.
	first.mu.Lock()
	m := first.vms[inst.ID]
	delete(first.vms, inst.ID)
	first.mu.Unlock()
	m.agent.close()
	m.mon.close()

	if err := second.Reattach(ctx, inst); err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if err := second.Probe(ctx, inst); err != nil {
		t.Errorf("Probe after Reattach: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := second.Check(inst); err != nil {
		t.Errorf("Check after Reattach: %v", err)
	}

	wrongPID := inst
	wrongPID.PID = os.Getpid()
	third := newTestProvider(t, stateDir, g, true)
	if err := third.Reattach(ctx, wrongPID); err == nil {
		t.Errorf("Reattach with a pid that is not the VM's returned nil")
	}

	// A provider that never saw the VM destroys it from its id alone.
	if err := third.Destroy(ctx, vm.Instance{ID: inst.ID}); err != nil {
		t.Fatalf("Destroy by id: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processExists(inst.PID) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processExists(inst.PID) {
		t.Errorf("qemu pid %d still exists after Destroy by id", inst.PID)
	}
	assertEmptyDir(t, stateDir)
}
