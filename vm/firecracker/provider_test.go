package firecracker

import (
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

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
)

func linkExists(netns, name string) bool {
	args := []string{"link", "show", "dev", name}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	return exec.Command("ip", args...).Run() == nil
}

// restoreClones restores n clones of snap in parallel and fails the test
// if any restore fails.
func restoreClones(t *testing.T, p *Provider, snap vm.Snapshot, n int) []vm.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	insts := make([]vm.Instance, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = p.Restore(ctx, fmt.Sprintf("clone-%d", i), testStack, snap)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("restore clone %d: %v", i, err)
		}
	}
	return insts
}

func destroyAll(t *testing.T, p *Provider, insts []vm.Instance) {
	t.Helper()
	for _, inst := range insts {
		if inst.ID == "" {
			continue
		}
		if err := p.Destroy(context.Background(), inst); err != nil {
			t.Errorf("destroy %s: %v", inst.ID, err)
		}
	}
}

func checkHealthy(t *testing.T, p *Provider, insts []vm.Instance) {
	t.Helper()
	for _, inst := range insts {
		if err := p.Check(inst); err != nil {
			t.Errorf("check %s: %v", inst.ID, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := p.Probe(ctx, inst); err != nil {
			t.Errorf("probe %s: %v", inst.ID, err)
		}
		cancel()
	}
}

func TestRestoreEightClonesWithOverrides(t *testing.T) {
	cfg := testConfig(t)
	cfg.NetworkMode = NetworkOverride
	cfg.CreateTAPs = true
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "override", uniqueTAP(t))

	insts := restoreClones(t, p, snap, 8)
	checkHealthy(t, p, insts)
	for _, inst := range insts {
		if tap := cloneTAPName(inst.ID, "eth0"); !linkExists("", tap) {
			t.Errorf("clone %s: TAP %s does not exist", inst.ID, tap)
		}
	}
	if got := p.SnapshotRefs(snap.Path); got != 8 {
		t.Errorf("snapshot refs = %d, want 8", got)
	}

	destroyAll(t, p, insts)
	for _, inst := range insts {
		if tap := cloneTAPName(inst.ID, "eth0"); linkExists("", tap) {
			t.Errorf("clone %s: TAP %s left after destroy", inst.ID, tap)
		}
	}
	if got := p.SnapshotRefs(snap.Path); got != 0 {
		t.Errorf("snapshot refs after destroy = %d, want 0", got)
	}
	checkNothingLeft(t, p)
}

func TestRestoreEightClonesInNetns(t *testing.T) {
	cfg := testConfig(t)
	cfg.NetworkMode = NetworkNamespace
	p := newTestProvider(t, cfg)
	// The emulator creates the TAP in each clone's namespace, so every
	// clone holds a device with the snapshot's name.
	tap := uniqueTAP(t)
	snap := makeTemplate(t, p, "netns", tap)

	insts := restoreClones(t, p, snap, 8)
	checkHealthy(t, p, insts)
	for _, inst := range insts {
		if !linkExists(netnsName(inst.ID), tap) {
			t.Errorf("clone %s: TAP %s missing in its namespace", inst.ID, tap)
		}
	}

	destroyAll(t, p, insts)
	for _, inst := range insts {
		if _, err := os.Stat(filepath.Join(netnsDir, netnsName(inst.ID))); err == nil {
			t.Errorf("clone %s: network namespace left after destroy", inst.ID)
		}
	}
	checkNothingLeft(t, p)
}

func TestRestoreOntoHeldTAP(t *testing.T) {
	// A TAP device held in another namespace must not matter, and one held
	// in the same namespace must fail the restore, or the emulator's TAP
	// handling proves nothing.
	cfg := testConfig(t)
	cfg.NetworkMode = NetworkNamespace
	p := newTestProvider(t, cfg)
	tap := uniqueTAP(t)
	snap := makeTemplate(t, p, "shared", tap)

	holder, err := openTAPForTest(tap)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	// The clone keeps the snapshot's TAP name, which the test holds in the
	// root namespace: only the clone's own namespace keeps them apart.
	inst, err := p.Restore(context.Background(), "shared-0", testStack, snap)
	if err != nil {
		t.Fatalf("restore in own namespace failed although the TAP is only held in the root namespace: %v", err)
	}
	destroyAll(t, p, []vm.Instance{inst})

	cfg2 := testConfig(t, fcemu.EnvVersion+"=1.16.1")
	cfg2.NetworkMode = NetworkOverride
	p2 := newTestProvider(t, cfg2)
	// Hold the TAP that the clone's network override names: the emulator
	// must fail with EBUSY.
	busy, err := openTAPForTest(cloneTAPName("busy-0", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p2.Restore(context.Background(), "busy-0", testStack, snap)
	busy.Close()
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("restore onto a held TAP: err = %v, want device busy", err)
	}
	checkNothingLeft(t, p2)
	checkNothingLeft(t, p)
}

func TestRestoreOverridesNeedVersion(t *testing.T) {
	cfg := testConfig(t, fcemu.EnvVersion+"=1.11.0")
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "old", uniqueTAP(t))

	_, err := p.Restore(context.Background(), "old-0", testStack, snap)
	if err == nil {
		t.Fatal("restore with network overrides on 1.11.0 succeeded")
	}
	if !strings.Contains(err.Error(), "1.12.0") {
		t.Errorf("error %q does not name the version needed", err)
	}
	checkNothingLeft(t, p)
}

func TestRestoreCrashCleansUp(t *testing.T) {
	cfg := testConfig(t)
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "crash", "")
	p.cfg.Env = append(p.cfg.Env, fcemu.EnvCrashOn+"=PUT /snapshot/load")

	// Several rounds, because the stderr copy races with the failed call.
	for i := range 5 {
		_, err := p.Restore(context.Background(), fmt.Sprintf("crash-%d", i), testStack, snap)
		if err == nil {
			t.Fatal("restore succeeded although the VMM crashed")
		}
		if !strings.Contains(err.Error(), "crashing on PUT /snapshot/load") {
			t.Errorf("error does not carry the VMM's stderr: %v", err)
		}
		if !strings.Contains(err.Error(), "signal: killed") {
			t.Errorf("error does not carry the VMM's exit status: %v", err)
		}
	}
	if got := p.SnapshotRefs(snap.Path); got != 0 {
		t.Errorf("snapshot refs = %d, want 0", got)
	}
	checkNothingLeft(t, p)
}

func TestRestoreHangTimesOut(t *testing.T) {
	cfg := testConfig(t)
	cfg.APITimeout = 200 * time.Millisecond
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "hang", "")
	p.cfg.Env = append(p.cfg.Env, fcemu.EnvHangOn+"=PUT /snapshot/load")

	_, err := p.Restore(context.Background(), "hang-0", testStack, snap)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
	checkNothingLeft(t, p)
}

func TestRestoreGuestHangFailsHealth(t *testing.T) {
	cfg := testConfig(t)
	cfg.HealthTimeout = 300 * time.Millisecond
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "guesthang", "")
	p.cfg.Env = append(p.cfg.Env, fcemu.EnvGuestHang+"=1")

	_, err := p.Restore(context.Background(), "guesthang-0", testStack, snap)
	if err == nil || !strings.Contains(err.Error(), "health check timed out") {
		t.Errorf("err = %v, want health check timeout", err)
	}
	checkNothingLeft(t, p)
}

func TestRestoreRejectsWrongStack(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "shape", "")
	key := testStack
	key.MemoryMiB = 128
	_, err := p.Restore(context.Background(), "shape-0", key, snap)
	if err == nil || !strings.Contains(err.Error(), "64 MiB") {
		t.Errorf("err = %v, want a machine shape mismatch", err)
	}
	checkNothingLeft(t, p)
}

func TestCheckAndProbeDetectFaults(t *testing.T) {
	cfg := testConfig(t)
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "faults", "")
	insts := restoreClones(t, p, snap, 2)
	if t.Failed() {
		return
	}

	// A stopped process keeps its socket but sends no heartbeats and
	// replies to no pings, like a hung guest.
	syscall.Kill(insts[0].PID, syscall.SIGSTOP)
	time.Sleep(cfg.HeartbeatTimeout + 100*time.Millisecond)
	if err := p.Check(insts[0]); err == nil || !strings.Contains(err.Error(), "heartbeat") {
		t.Errorf("check of stopped VM: err = %v, want stale heartbeat", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := p.Probe(ctx, insts[0])
	cancel()
	if err == nil {
		t.Error("probe of stopped VM succeeded")
	}

	syscall.Kill(insts[1].PID, syscall.SIGKILL)
	deadline := time.Now().Add(2 * time.Second)
	for p.Check(insts[1]) == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.Check(insts[1]); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("check of killed VM: err = %v, want process killed", err)
	}

	destroyAll(t, p, insts)
	checkNothingLeft(t, p)
}

func TestDestroyWithShutdownGrace(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownGrace = 2 * time.Second
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "grace", "")
	insts := restoreClones(t, p, snap, 1)
	if t.Failed() {
		return
	}
	m := p.lookup(insts[0].ID)
	destroyAll(t, p, insts)
	// The emulator exits with status 0 on SendCtrlAltDel, SIGKILL would
	// show as a wait error.
	if err := m.proc.waitErr; err != nil {
		t.Errorf("VMM did not exit on its own: %v", err)
	}
	checkNothingLeft(t, p)
}

func TestDestroyByIDAfterRestart(t *testing.T) {
	cfg := testConfig(t)
	cfg.Detached = true
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "restart", uniqueTAP(t))
	insts := restoreClones(t, p, snap, 2)
	if t.Failed() {
		return
	}

	// A second provider plays the restarted daemon: it has never seen the
	// VMs and destroys one from its id alone and reattaches the other.
	p2 := newTestProvider(t, cfg)
	if err := p2.Destroy(context.Background(), vm.Instance{ID: insts[0].ID}); err != nil {
		t.Errorf("destroy by id: %v", err)
	}
	if err := syscall.Kill(insts[0].PID, 0); err == nil {
		t.Errorf("process %d still runs after destroy by id", insts[0].PID)
	}

	if err := p2.Reattach(context.Background(), insts[1]); err != nil {
		t.Fatalf("reattach: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // let the guest reconnect its heartbeats
	checkHealthy(t, p2, insts[1:])
	if got := p2.SnapshotRefs(snap.Path); got != 1 {
		t.Errorf("snapshot refs after reattach = %d, want 1", got)
	}
	if err := p2.Destroy(context.Background(), insts[1]); err != nil {
		t.Errorf("destroy reattached: %v", err)
	}

	p.mu.Lock()
	clear(p.vms)
	p.mu.Unlock()
	checkNothingLeft(t, p2)
}

func TestReattachRejectsForeignProcess(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	os.MkdirAll(p.cfg.vmDir("foreign"), 0o755)
	os.WriteFile(filepath.Join(p.cfg.vmDir("foreign"), recordName), []byte(fmt.Sprintf(`{"pid":%d}`, os.Getpid())), 0o600)
	err := p.Reattach(context.Background(), vm.Instance{ID: "foreign"})
	if err == nil || !strings.Contains(err.Error(), "no running firecracker process") {
		t.Errorf("reattach to the test process: err = %v", err)
	}
	if err := p.Destroy(context.Background(), vm.Instance{ID: "foreign"}); err != nil {
		t.Errorf("destroy: %v", err)
	}
	if err := syscall.Kill(os.Getpid(), 0); err != nil {
		t.Fatal("destroy killed a process it does not own")
	}
	checkNothingLeft(t, p)
}

func TestDestroyRejectsBadID(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	for _, id := range []string{"../etc", "a/b", "", ".hidden"} {
		if err := p.Destroy(context.Background(), vm.Instance{ID: id}); !errors.Is(err, vm.ErrInvalidID) {
			t.Errorf("destroy %q: err = %v, want invalid id", id, err)
		}
	}
	if err := p.Destroy(context.Background(), vm.Instance{ID: "never-existed"}); err != nil {
		t.Errorf("destroy of an unknown VM: %v", err)
	}
}

func TestSnapshotRemovedAfterLastClone(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "refs", "")
	insts := restoreClones(t, p, snap, 2)
	if t.Failed() {
		return
	}
	if err := p.RemoveSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	destroyAll(t, p, insts[:1])
	if _, err := os.Stat(snap.Path); err != nil {
		t.Errorf("snapshot removed while a clone uses it: %v", err)
	}
	destroyAll(t, p, insts[1:])
	if _, err := os.Stat(snap.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot left after its last clone: %v", err)
	}
	checkNothingLeft(t, p)
}

func TestTemplateRejectsExistingSnapshot(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "again", "")
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	if meta.FirecrackerVersion != fcemu.DefaultVersion {
		t.Errorf("metadata version = %q", meta.FirecrackerVersion)
	}
	info, err := os.Stat(filepath.Join(snap.Path, meta.MemFile))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != int64(testStack.MemoryMiB)<<20 {
		t.Errorf("memory file has %d bytes, want %d", info.Size(), testStack.MemoryMiB<<20)
	}
	spec := TemplateSpec{ID: "again", SnapshotDir: filepath.Dir(snap.Path), Stack: testStack, KernelImage: "/k"}
	if _, err := p.Template(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second template with one id: err = %v", err)
	}
	checkNothingLeft(t, p)
}

func TestJailerRestore(t *testing.T) {
	for _, mode := range []string{NetworkOverride, NetworkNamespace} {
		t.Run(mode, func(t *testing.T) { testJailerRestore(t, mode) })
	}
}

func testJailerRestore(t *testing.T, mode string) {
	cfg := testConfig(t)
	cfg.NetworkMode = mode
	cfg.CreateTAPs = true
	cfg.Jailer = &JailerConfig{Bin: jailerBin, UID: 65534, GID: 65534, ChrootBaseDir: shortTempDir(t)}
	os.Chmod(cfg.Jailer.ChrootBaseDir, 0o755)
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "jail", uniqueTAP(t))

	insts := restoreClones(t, p, snap, 3)
	checkHealthy(t, p, insts)
	for _, inst := range insts {
		if !strings.HasPrefix(inst.Dir, cfg.Jailer.ChrootBaseDir) {
			t.Errorf("VM dir %s is outside the chroot base", inst.Dir)
		}
	}
	destroyAll(t, p, insts)
	entries, _ := os.ReadDir(filepath.Join(cfg.Jailer.ChrootBaseDir, "firecracker"))
	for _, e := range entries {
		t.Errorf("chroot left: %s", e.Name())
	}
	checkNothingLeft(t, p)
}
