package firecracker

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/vm"
)

func TestCheckSnapshotRejectsUnusable(t *testing.T) {
	requireEmulator(t)
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "check", "")
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	key := meta.Stack
	if err := p.CheckSnapshot(key, snap); err != nil {
		t.Fatalf("CheckSnapshot of a fresh template: %v", err)
	}

	wrongShape := key
	wrongShape.VCPUs++
	other := snap
	other.Provider = "qemu"
	missing := snap
	missing.Path = filepath.Join(snap.Path, "none")
	cases := []struct {
		name string
		key  vm.StackKey
		snap vm.Snapshot
		want string
	}{
		{"shape mismatch", wrongShape, snap, "wants"},
		{"other provider", key, other, `provider "qemu"`},
		{"missing dir", key, missing, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := p.CheckSnapshot(tc.key, tc.snap)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CheckSnapshot = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	checkNothingLeft(t, p)
}
