package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/vm"
)

func TestCheckSnapshot(t *testing.T) {
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := vm.StackKey{Name: "py", Version: "3.12", VCPUs: 1, MemoryMiB: 256}
	dir := t.TempDir()

	matching := filepath.Join(dir, "matching")
	other := filepath.Join(dir, "other")
	plain := filepath.Join(dir, "plain")
	for path, record := range map[string]string{
		matching: `{"provider":"sim","stack":{"name":"py","version":"3.12","vcpus":1,"memory_mib":256}}`,
		other:    `{"provider":"sim","stack":{"name":"py","version":"3.12","vcpus":2,"memory_mib":256}}`,
		plain:    "",
	} {
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		if record != "" {
			if err := os.WriteFile(filepath.Join(path, SnapshotFile), []byte(record), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		snap vm.Snapshot
		want string // a substring of the error, or "" for none
	}{
		{"sim scheme", vm.Snapshot{Path: "sim://py"}, ""},
		{"sim scheme without name", vm.Snapshot{Path: "sim://"}, "add a name"},
		{"matching directory", vm.Snapshot{Path: matching}, ""},
		{"directory without record", vm.Snapshot{Path: plain}, ""},
		{"other stack", vm.Snapshot{Path: other}, "made for stack py@3.12/2cpu/256MiB"},
		{"missing directory", vm.Snapshot{Path: filepath.Join(dir, "missing")}, "no such file"},
		{"regular file", vm.Snapshot{Path: file}, "not a directory"},
		{"other provider", vm.Snapshot{Path: "sim://py", Provider: "qemu"}, `provider "qemu"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.CheckSnapshot(key, tt.snap)
			if tt.want == "" {
				if err != nil {
					t.Errorf("CheckSnapshot: %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CheckSnapshot: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
