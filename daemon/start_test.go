package daemon

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm/sim"
)

// startConfig writes text to a config file in a fresh directory and loads it.
func startConfig(t *testing.T, text string) *Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warmpool.yaml")
	writeConfig(t, path, text)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestStartFailureReturnsError(t *testing.T) {
	cfg := startConfig(t, testConfig(t, t.TempDir()))
	// A regular file at the socket path fails the listen step, which runs
	// after the record store is open.
	writeConfig(t, cfg.Listen.Socket, "not a socket")

	d, err := Start(context.Background(), cfg, Options{})
	if err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start succeeded with a regular file at the socket path")
	}
	if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error = %v, want it to say the path is not a socket", err)
	}
	if d != nil {
		t.Errorf("Start returned a daemon with its error")
	}

	// The store was closed, so another start can take its lock at once.
	os.Remove(cfg.Listen.Socket)
	d, err = Start(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatalf("second Start: %v", err)
	}
	d.Shutdown(context.Background())
}

func TestStartRejectsUnusableSnapshot(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	wrongShape := filepath.Join(t.TempDir(), "node")
	if err := os.Mkdir(wrongShape, 0o755); err != nil {
		t.Fatal(err)
	}
	record := `{"provider":"sim","stack":{"name":"node","version":"22","vcpus":4,"memory_mib":512}}`
	writeConfig(t, filepath.Join(wrongShape, "sim-snapshot.json"), record)

	text := testConfig(t, t.TempDir())
	text = strings.Replace(text, "sim://py", missing, 1)
	text = strings.Replace(text, "sim://node", wrongShape, 1)
	cfg := startConfig(t, text)
	p, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}

	d, err := Start(context.Background(), cfg, Options{Provider: p})
	if err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start succeeded with a missing snapshot")
	}
	for _, want := range []string{
		"stacks[0] (py@3.12/1cpu/256MiB): sim: snapshot: stat " + missing,
		"stacks[1] (node@22/2cpu/512MiB): sim: snapshot " + wrongShape + " was made for stack node@22/4cpu/512MiB",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %v\nwant it to contain %q", err, want)
		}
	}
	if restored := p.Restored(); len(restored) != 0 {
		t.Errorf("Start restored VMs before it failed: %v", restored)
	}
}

func TestStartRejectsMissingVMMBinary(t *testing.T) {
	snapDir := t.TempDir()
	text := testConfig(t, t.TempDir())
	text = strings.Replace(text, "provider: {kind: sim}", "provider:\n  kind: qemu\n  qemu:\n    binary: /nonexistent/qemu", 1)
	text = strings.ReplaceAll(text, "sim://py", snapDir)
	text = strings.ReplaceAll(text, "sim://node", snapDir)
	cfg := startConfig(t, text)

	d, err := Start(context.Background(), cfg, Options{})
	if err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start succeeded with a missing QEMU binary")
	}
	if !strings.Contains(err.Error(), `provider.qemu.binary "/nonexistent/qemu"`) {
		t.Errorf("error = %v, want it to name provider.qemu.binary", err)
	}
}

func TestReadyzWhileStackNeverWarm(t *testing.T) {
	p, err := sim.New(sim.Config{RestoreFailureRate: 1})
	if err != nil {
		t.Fatal(err)
	}
	td := startTestDaemon(t, testConfig(t, t.TempDir()), p)

	// Every restore fails, so both stacks back off without a warm VM.
	deadline := time.Now().Add(5 * time.Second)
	for {
		backingOff := 0
		for _, b := range td.Stats().Buckets {
			if !b.RetryAt.IsZero() {
				backingOff++
			}
		}
		if backingOff == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stacks did not back off: %+v", td.Stats().Buckets)
		}
		time.Sleep(5 * time.Millisecond)
	}

	status, body := td.do(t, "GET", "/readyz", "")
	if status != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz: status %d, want 503 (body %s)", status, body)
	}
	if !strings.Contains(body, "py@3.12/1cpu/256MiB") {
		t.Errorf("GET /readyz body %s does not name the stack that never got warm", body)
	}
}

func TestStartQEMUDefaultBinaryChecked(t *testing.T) {
	snapDir := t.TempDir()
	text := testConfig(t, t.TempDir())
	text = strings.Replace(text, "provider: {kind: sim}", "provider:\n  kind: qemu\n  qemu: {accel: tcg}", 1)
	text = strings.ReplaceAll(text, "sim://py", snapDir)
	text = strings.ReplaceAll(text, "sim://node", snapDir)
	cfg := startConfig(t, text)
	// An empty PATH hides the default binary, which must be looked up by
	// its default name and not as an empty string.
	t.Setenv("PATH", "")

	d, err := Start(context.Background(), cfg, Options{})
	if err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start succeeded without a QEMU binary on PATH")
	}
	if !strings.Contains(err.Error(), `provider.qemu.binary "qemu-system-x86_64"`) {
		t.Errorf("error = %v, want it to name the default binary", err)
	}
}
