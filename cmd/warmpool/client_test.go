package main

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func TestAcquireRejectsNegativeWait(t *testing.T) {
	cmd := newAcquireCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	// The socket does not exist, so only a check before the request can
	// produce the expected error.
	socket := filepath.Join(t.TempDir(), "none.sock")
	cmd.SetArgs([]string{"--socket", socket, "--stack", "py@3.12", "--wait", "-5s"})

	err := cmd.Execute()
	if err == nil {
		t.Fatal("acquire --wait -5s succeeded")
	}
	if !strings.Contains(err.Error(), `invalid --wait -5s`) {
		t.Errorf("error = %v, want it to name --wait", err)
	}
}
