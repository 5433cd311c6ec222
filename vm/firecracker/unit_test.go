package firecracker

import (
	"strings"
	"testing"
)

func TestRingBufferKeepsTail(t *testing.T) {
	r := newRingBuffer(8)
	r.Write([]byte("0123"))
	r.Write([]byte("456789ab"))
	if got := r.String(); got != "456789ab" {
		t.Errorf("String() = %q, want %q", got, "456789ab")
	}
	r.Write([]byte("cd"))
	if got := r.String(); got != "6789abcd" {
		t.Errorf("String() = %q, want %q", got, "6789abcd")
	}
}

func TestCloneTAPNameFitsIfname(t *testing.T) {
	long := strings.Repeat("a", 64)
	names := map[string]bool{}
	for _, id := range []string{long, long[:63] + "b", "x"} {
		name := cloneTAPName(id, "eth0")
		if len(name) > 15 {
			t.Errorf("TAP name %q has %d bytes, Linux allows 15", name, len(name))
		}
		if names[name] {
			t.Errorf("TAP name %q repeats", name)
		}
		names[name] = true
	}
	if cloneTAPName("x", "eth0") == cloneTAPName("x", "eth1") {
		t.Error("two interfaces of one VM share a TAP name")
	}
}

func TestOwnedDirStaysInside(t *testing.T) {
	c := Config{FirecrackerBin: "/bin/firecracker", StateDir: "/var/lib/warmpool"}
	dir, err := c.ownedDir("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if dir != "/var/lib/warmpool/vms/vm-1" {
		t.Errorf("ownedDir = %q", dir)
	}
	for _, id := range []string{"..", "../x", "a/../../b", ""} {
		if _, err := c.ownedDir(id); err == nil {
			t.Errorf("ownedDir(%q) accepted", id)
		}
	}
	c.Jailer = &JailerConfig{ChrootBaseDir: "/srv/jailer"}
	if dir, _ := c.ownedDir("vm-1"); dir != "/srv/jailer/firecracker/vm-1" {
		t.Errorf("jailer ownedDir = %q", dir)
	}
}
