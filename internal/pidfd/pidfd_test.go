package pidfd

import (
	"os/exec"
	"testing"
	"time"
)

func TestWatchSeesExit(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited, err := Watch(cmd.Process.Pid)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	select {
	case <-exited:
		t.Fatal("exit reported while the process runs")
	case <-time.After(50 * time.Millisecond):
	}

	cmd.Process.Kill()
	cmd.Wait()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("exit not reported within 5s of the kill")
	}
}

func TestWatchRejectsMissingPID(t *testing.T) {
	// Linux pids are at most 4194304 (PID_MAX_LIMIT), so this one never exists.
	if _, err := Watch(4194305); err == nil {
		t.Error("Watch of a pid above the kernel's limit returned no error")
	}
}
