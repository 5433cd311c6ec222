package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
