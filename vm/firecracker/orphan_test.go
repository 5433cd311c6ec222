package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// helperEnv makes the test binary run runRestoreHelper instead of the
// tests: it restores one VM with the JSON configuration in helperConfigEnv
// from the snapshot in helperSnapshotEnv, prints the VMM's pid and waits to
// be killed.
const (
	helperEnv         = "WARMPOOL_FC_TEST_HELPER"
	helperConfigEnv   = "WARMPOOL_FC_TEST_CONFIG"
	helperSnapshotEnv = "WARMPOOL_FC_TEST_SNAPSHOT"
)

func runRestoreHelper() int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "helper config:", err)
		return 2
	}
	p, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	snap := vm.Snapshot{ID: "orphan", Provider: ProviderName, Path: os.Getenv(helperSnapshotEnv)}
	inst, err := p.Restore(context.Background(), "orphan-0", testStack, snap)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	fmt.Println(inst.PID)
	select {}
}

// startRestoreHelper runs the helper and returns it with the pid of the
// VM it restored.
func startRestoreHelper(t *testing.T, cfg Config, snap vm.Snapshot) (*exec.Cmd, int) {
	t.Helper()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=restore", helperConfigEnv+"="+string(data), helperSnapshotEnv+"="+snap.Path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, convErr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || convErr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper output %q: %v %v", line, err, convErr)
	}
	return cmd, pid
}

// waitGone waits up to timeout for pid to exit and reports whether it did.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func TestJailedVMMDiesWithProgram(t *testing.T) {
	cfg := jailerConfig(t)
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "orphan", "")

	helper, pid := startRestoreHelper(t, cfg, snap)
	if !processMatches(pid, "--id", "orphan-0") {
		t.Errorf("pid %d that the helper returned does not run the VM", pid)
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()

	if !waitGone(pid, 3*time.Second) {
		t.Errorf("jailed VMM %d still runs after its program got SIGKILL", pid)
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, time.Second)
	}
	p2 := newTestProvider(t, cfg)
	p2.Destroy(context.Background(), vm.Instance{ID: "orphan-0"})
	checkNothingLeft(t, p2)
}

func TestNewReclaimsVMsOfDeadProgram(t *testing.T) {
	cfg := testConfig(t)
	cfg.CreateTAPs = true
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "stale", uniqueTAP(t))

	helper, pid := startRestoreHelper(t, cfg, snap)
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	if !waitGone(pid, 3*time.Second) {
		t.Fatalf("VMM %d still runs after its program got SIGKILL", pid)
	}
	tap := cloneTAPName("orphan-0", "eth0")
	if !linkExists("", tap) {
		t.Fatalf("TAP %s of the killed program's VM is missing before the restart", tap)
	}

	p2 := newTestProvider(t, cfg)
	if linkExists("", tap) {
		t.Errorf("TAP %s of a dead program's VM left after New", tap)
		exec.Command("ip", "link", "delete", "dev", tap).Run()
	}
	checkNothingLeft(t, p2)
}

func TestNewKeepsDetachedVMs(t *testing.T) {
	cfg := testConfig(t)
	cfg.Detached = true
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "kept", "")
	helper, pid := startRestoreHelper(t, cfg, snap)
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()

	p2 := newTestProvider(t, cfg)
	if syscall.Kill(pid, 0) != nil {
		t.Errorf("New killed detached VM %d of a dead program", pid)
	}
	if err := p2.Destroy(context.Background(), vm.Instance{ID: "orphan-0", PID: pid}); err != nil {
		t.Errorf("destroy: %v", err)
	}
	checkNothingLeft(t, p2)
}
