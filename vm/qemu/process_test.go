package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// TestKillStopsWrapperChild starts a wrapper script that runs its child
// without exec, as a QEMU wrapper might, and checks that kill stops the
// child too.
func TestKillStopsWrapperChild(t *testing.T) {
	dir := t.TempDir()
	childPIDFile := filepath.Join(dir, "child.pid")
	script := filepath.Join(dir, "wrapper.sh")
	body := "#!/bin/sh\nsleep 300 &\necho $! > " + childPIDFile + "\nwait\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}

	proc, err := startProcess(script, nil, dir, dir, nil, false)
	if err != nil {
		t.Fatalf("startProcess: %v", err)
	}
	var childPID int
	deadline := time.Now().Add(5 * time.Second)
	for childPID == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(childPIDFile)
		childPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(10 * time.Millisecond)
	}
	if childPID == 0 {
		proc.kill(time.Second)
		t.Fatal("wrapper did not start its child")
	}

	if err := proc.kill(2 * time.Second); err != nil {
		t.Fatalf("kill: %v", err)
	}
	deadline = time.Now().Add(2 * time.Second)
	for processExists(childPID) && !isZombie(childPID) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processExists(childPID) && !isZombie(childPID) {
		t.Errorf("child pid %d of the wrapper still runs after kill", childPID)
	}
}

// isZombie reports whether pid has exited and waits for its parent to
// reap it.
func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

// TestLaunchErrorNamesExitStatus starts a QEMU stand-in that writes to
// stderr and exits 3, and checks that the launch error contains both.
func TestLaunchErrorNamesExitStatus(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "failing-qemu.sh")
	body := "#!/bin/sh\necho 'No space left on device' >&2\nexit 3\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{StateDir: filepath.Join(dir, "state"), Binary: script, Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = p.launch(ctx, "fail-1", launchSpec{workDir: dir, memoryMiB: 16, memoryPath: filepath.Join(dir, "memory")})
	if err == nil {
		t.Fatal("launch of a failing binary returned nil")
	}
	if !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("launch error %q lacks the exit status", err)
	}
	if !strings.Contains(err.Error(), "No space left on device") {
		t.Errorf("launch error %q lacks the stderr tail", err)
	}
}

func TestDestroyFindsQEMUWithoutPIDFile(t *testing.T) {
	stateDir := t.TempDir()
	p, err := New(Config{StateDir: stateDir, Accel: AccelTCG, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const id = "nopidfile-1"
	if err := os.MkdirAll(filepath.Join(stateDir, id), 0o700); err != nil {
		t.Fatal(err)
	}

	// A shell whose command line looks like the QEMU of VM id, as left by
	// a process killed after it started QEMU and before it wrote the pid
	// file.
	fake := exec.Command("/bin/sh", "-c", "sleep 300; :", "-name", "guest="+processName(id))
	fake.Args[0] = "qemu-system-x86_64"
	fake.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- fake.Wait() }()
	t.Cleanup(func() { syscall.Kill(-fake.Process.Pid, syscall.SIGKILL) })

	if err := p.Destroy(context.Background(), vm.Instance{ID: id}); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the QEMU of the VM still runs after Destroy")
	}
	if _, err := os.Stat(filepath.Join(stateDir, id)); !os.IsNotExist(err) {
		t.Errorf("VM directory after Destroy: %v, want it removed", err)
	}
}
