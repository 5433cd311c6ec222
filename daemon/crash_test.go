package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/guest"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/qemu"
)

// qemuTemplate builds the guest (or reuses the one the qemu package's tests
// build) and makes a template of it in dir. It skips the test when QEMU or
// the host packages the guest is built from are missing.
func qemuTemplate(t *testing.T, dir string) (vm.StackKey, vm.Snapshot, string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testenv.Skipf(t, "qemu-system-x86_64 not found in PATH: install Debian's qemu-system-x86 to run the crash test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g, err := guest.Build(ctx, guest.Options{OutDir: filepath.Join(os.TempDir(), "warmpool-test-guest")})
	if err != nil {
		testenv.Skipf(t, "cannot build the QEMU guest (needs a Debian kernel image and busybox-static): %v", err)
	}

	accel := os.Getenv("WARMPOOL_TEST_ACCEL")
	if accel == "" {
		accel = qemu.AccelTCG
	}
	p, err := qemu.New(qemu.Config{StateDir: filepath.Join(dir, "template-vms"), Accel: accel,
		Kernel: g.Kernel, Initrd: g.Initrd})
	if err != nil {
		t.Fatal(err)
	}
	key := vm.StackKey{Name: "crash", Version: "1", VCPUs: 1, MemoryMiB: 128}
	tmpl, err := p.CreateTemplate(ctx, key, filepath.Join(dir, "snapshot"))
	if err != nil {
		t.Fatalf("create template: %v", err)
	}
	return key, tmpl.Snapshot, accel
}

// qemuProcesses returns the live QEMU processes whose working directory is
// snapshotDir, where the qemu provider runs each clone, mapped to the VM id
// in their "-name guest=warmpool-ID" argument.
func qemuProcesses(t *testing.T, snapshotDir string) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	pids := make(map[int]string)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || cwd != snapshotDir {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || !strings.Contains(filepath.Base(exe), "qemu") {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		pids[pid] = ""
		for _, arg := range strings.Split(string(cmdline), "\x00") {
			if id, ok := strings.CutPrefix(arg, "guest=warmpool-"); ok {
				pids[pid] = id
			}
		}
	}
	return pids
}

// recordedVMs reads the daemon's record store while no daemon runs.
func recordedVMs(t *testing.T, stateDir string) []state.Record {
	t.Helper()
	s, err := state.Open(stateDir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestCrashRecoveryQEMU kills the daemon with SIGKILL twice while it
// restores and hands out QEMU VMs. Every QEMU process and VM directory left
// behind must belong to a recorded VM. The next start must keep the
// handed-out VMs, and after they are destroyed through the API a clean stop
// must leave no process, directory or record.
func TestCrashRecoveryQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU VMs: skipped with -short")
	}
	dir := t.TempDir()
	key, snap, accel := qemuTemplate(t, dir)
	t.Logf("template %s (accel %s)", snap.ID, accel)

	vmsDir := filepath.Join(dir, "vms")
	stateDir := filepath.Join(dir, "state")
	t.Cleanup(func() {
		for pid, id := range qemuProcesses(t, snap.Path) {
			t.Errorf("killing QEMU process %d of VM %s left behind", pid, id)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sockDir, err := os.MkdirTemp("", "wpc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	socket := filepath.Join(sockDir, "wp.sock")
	configPath := filepath.Join(dir, "warmpool.yaml")
	writeConfig(t, configPath, fmt.Sprintf(`provider:
  kind: qemu
  qemu: {state_dir: %s}
pool:
  min_depth: 2
  max_depth: 3
  restore_concurrency: 2
  refill_interval: 100ms
  restore_timeout: 60s
listen: {socket: %s}
state_dir: %s
shutdown_timeout: 60s
stacks:
  - key: {name: %s, version: "%s", vcpus: %d, memory_mib: %d}
    snapshot: {path: %s}
`, vmsDir, socket, stateDir, key.Name, key.Version, key.VCPUs, key.MemoryMiB, snap.Path))

	client := NewClient(socket)
	ctx := context.Background()
	var handedOut []string
	for round := range 2 {
		p := startDaemonProcess(t, configPath, socket)
		resp, err := client.Acquire(ctx, AcquireRequest{Stack: key, WaitMS: 60000})
		if err != nil {
			t.Fatalf("round %d: acquire: %v", round, err)
		}
		handedOut = append(handedOut, resp.VM.ID)
		// A second acquire races the refill the first one started, and
		// the kill lands while both are in flight.
		go client.Acquire(ctx, AcquireRequest{Stack: key, WaitMS: 60000})
		time.Sleep(150 * time.Millisecond)
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		p.wait(t, 10*time.Second)
	}

	// Every QEMU left running by the killed daemons is recorded.
	recorded := recordedVMs(t, stateDir)
	recordedIDs := make(map[string]state.Record)
	for _, rec := range recorded {
		recordedIDs[rec.ID] = rec
	}
	checkAccounted := func(when string, records map[string]state.Record) {
		t.Helper()
		for pid, id := range qemuProcesses(t, snap.Path) {
			rec, ok := records[id]
			if !ok {
				t.Errorf("%s: QEMU process %d of VM %q is not recorded", when, pid, id)
				continue
			}
			// A restore interrupted by the kill has no pid recorded yet.
			if rec.PID != 0 && rec.PID != pid {
				t.Errorf("%s: QEMU process %d of VM %s, recorded pid %d", when, pid, id, rec.PID)
			}
		}
		entries, _ := os.ReadDir(vmsDir)
		for _, e := range entries {
			if _, ok := records[e.Name()]; !ok {
				t.Errorf("%s: VM directory %s is not recorded", when, e.Name())
			}
		}
	}
	counts := make(map[state.State]int)
	for _, rec := range recorded {
		counts[rec.State]++
	}
	t.Logf("after the kills: %d QEMU processes, records by state %v", len(qemuProcesses(t, snap.Path)), counts)
	checkAccounted("after the kills", recordedIDs)
	for _, id := range handedOut {
		if recordedIDs[id].State != state.HandedOut {
			t.Errorf("handed-out VM %s recorded in state %q, want handed_out", id, recordedIDs[id].State)
		}
	}

	// The next start recovers: it adopts or destroys every recorded VM but
	// the handed-out ones.
	p := startDaemonProcess(t, configPath, socket)
	p.waitLog(t, `"msg":"daemon started"`)
	vms, err := client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, rec := range vms.VMs {
		listed = append(listed, rec.ID)
	}
	for _, id := range handedOut {
		if !slices.Contains(listed, id) {
			t.Errorf("handed-out VM %s not listed after recovery (listed %v)", id, listed)
		}
	}

	// Destroy the handed-out VMs (and any the racing acquires got), then
	// stop. Nothing may be left.
	for _, id := range listed {
		if err := client.Destroy(ctx, id); err != nil {
			t.Errorf("destroy %s: %v", id, err)
		}
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 90*time.Second); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	if pids := qemuProcesses(t, snap.Path); len(pids) > 0 {
		t.Errorf("QEMU processes left after stop: %v", pids)
	}
	if entries, _ := os.ReadDir(vmsDir); len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("VM directories left after stop: %v", names)
	}
	if recs := recordedVMs(t, stateDir); len(recs) > 0 {
		t.Errorf("records left after stop: %+v", recs)
	}
	logs := p.logs.String()
	for _, want := range []string{"recovery: kept handed-out VM"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if !strings.Contains(logs, "recovery: adopted warm VM") && !strings.Contains(logs, "recovery: destroyed VM") {
		t.Error("log shows no recovery of the pool's VMs")
	}
}
