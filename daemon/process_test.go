package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// warmpoolBinary builds cmd/warmpool once per test run and returns its path.
func warmpoolBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the warmpool binary: skipped with -short")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "warmpool-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "warmpool")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/warmpool").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// daemonProcess is warmpool serve running as a child process.
type daemonProcess struct {
	cmd    *exec.Cmd
	socket string
	logs   *syncBuffer
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
}

func startDaemonProcess(t *testing.T, configPath, socket string) *daemonProcess {
	t.Helper()
	cmd := exec.Command(warmpoolBinary(t), "serve", "--config", configPath, "--log-format", "json", "--log-level", "debug")
	logs := &syncBuffer{}
	cmd.Stdout = logs
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProcess{cmd: cmd, socket: socket, logs: logs, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs)
		}
	})
	p.waitReady(t)
	return p
}

// waitReady polls /readyz until the daemon returns 200.
func (p *daemonProcess) waitReady(t *testing.T) {
	t.Helper()
	client := NewClient(p.socket)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("daemon exited during start: %v", p.err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := client.do(ctx, "GET", "/readyz", nil, nil)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("daemon not ready within 30s")
}

// wait waits up to limit for the process to exit and returns its exit code.
func (p *daemonProcess) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("daemon still running %v after the signal", limit)
	}
	var exitErr *exec.ExitError
	if errors.As(p.err, &exitErr) {
		return exitErr.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func (p *daemonProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until the daemon's log contains s.
func (p *daemonProcess) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.logs.String(), s) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("log does not contain %q within 10s", s)
}

func TestServeSignals(t *testing.T) {
	dir := t.TempDir()
	configPath := filepath.Join(dir, "warmpool.yaml")
	text := testConfig(t, dir)
	writeConfig(t, configPath, text)
	cfg, err := ParseConfig(configPath, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	socket := cfg.Listen.Socket

	p := startDaemonProcess(t, configPath, socket)
	client := NewClient(socket)
	ctx := context.Background()
	acquired, err := client.Acquire(ctx, AcquireRequest{Stack: testKey, WaitMS: 5000})
	if err != nil {
		t.Fatal(err)
	}

	// SIGHUP with a new stack in the file registers it.
	added := text + "  - key: {name: ruby, version: \"3\", vcpus: 1, memory_mib: 128}\n    snapshot: {path: sim://ruby}\n"
	writeConfig(t, configPath, added)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"msg":"config reloaded"`)
	second, err := client.Acquire(ctx, AcquireRequest{Stack: unusedKey, WaitMS: 5000})
	if err != nil {
		t.Fatalf("acquire from the stack added by SIGHUP: %v", err)
	}

	// A bad file on SIGHUP is rejected and the daemon keeps serving.
	writeConfig(t, configPath, added+"bogus: 1\n")
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"msg":"reload rejected, keeping the running config"`)
	if _, err := client.Pools(ctx); err != nil {
		t.Errorf("daemon stopped serving after a bad reload: %v", err)
	}
	writeConfig(t, configPath, text)

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	logs := p.logs.String()
	if !strings.Contains(logs, `"msg":"daemon stopped"`) {
		t.Error("log lacks the stop line")
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after stop: %v", err)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "VM handed out") && !strings.Contains(line, `"level":"DEBUG"`) {
			t.Errorf("acquire logged above debug: %s", line)
		}
	}

	// The handed-out VMs stay recorded and listed after a restart.
	p = startDaemonProcess(t, configPath, socket)
	vms, err := client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, rec := range vms.VMs {
		ids = append(ids, rec.ID)
	}
	if len(ids) != 2 || !slices.Contains(ids, acquired.VM.ID) || !slices.Contains(ids, second.VM.ID) {
		t.Errorf("handed-out VMs after restart = %v, want %s and %s", ids, acquired.VM.ID, second.VM.ID)
	}
	p.waitLog(t, "recovery: kept handed-out VM")

	p.signal(t, syscall.SIGINT)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit code after SIGINT = %d, want 0", code)
	}
}

func TestServeSecondSignalExitsAtOnce(t *testing.T) {
	dir := t.TempDir()
	configPath := filepath.Join(dir, "warmpool.yaml")
	// Destroys that take 20s make the first SIGTERM's stop slow.
	text := strings.Replace(testConfig(t, dir), "provider: {kind: sim}",
		"provider:\n  kind: sim\n  sim: {destroy_latency: 20s}", 1)
	text = strings.Replace(text, "shutdown_timeout: 5s", "shutdown_timeout: 60s", 1)
	text = strings.Replace(text, "refill_interval: 10ms", "refill_interval: 10ms\n  destroy_timeout: 60s", 1)
	writeConfig(t, configPath, text)
	cfg, err := ParseConfig(configPath, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	p := startDaemonProcess(t, configPath, cfg.Listen.Socket)
	if _, err := NewClient(cfg.Listen.Socket).Acquire(context.Background(), AcquireRequest{Stack: testKey, WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}

	p.signal(t, syscall.SIGTERM)
	p.waitLog(t, `"msg":"daemon stopping"`)

	// A copy of the stop signal that arrives at once, as GNU timeout sends
	// one to the daemon and one to its process group, is ignored.
	p.signal(t, syscall.SIGTERM)
	p.waitLog(t, `"msg":"repeated signal ignored, still stopping"`)

	// Past serve's 500ms window for copies, a second signal exits.
	time.Sleep(600 * time.Millisecond)
	start := time.Now()
	p.signal(t, syscall.SIGINT)
	code := p.wait(t, 10*time.Second)
	if code != 1 {
		t.Errorf("exit code after the second signal = %d, want 1", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("exit took %v after the second signal", took)
	}
	if !strings.Contains(p.logs.String(), "second signal received, exiting now") {
		t.Error("log lacks the second-signal line")
	}
}
