package firecracker

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/warmpool/warmpool/vm"
)

const testJailUID, testJailGID = 54321, 54321

func jailerConfig(t *testing.T) Config {
	t.Helper()
	cfg := testConfig(t)
	cfg.Jailer = &JailerConfig{Bin: jailerBin, UID: testJailUID, GID: testJailGID, ChrootBaseDir: shortTempDir(t)}
	os.Chmod(cfg.Jailer.ChrootBaseDir, 0o755)
	return cfg
}

func fileOwner(t *testing.T, path string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Uid, st.Gid, os.FileMode(st.Mode & 0o777)
}

func TestJailerLeavesOperatorFilesAlone(t *testing.T) {
	p := newTestProvider(t, jailerConfig(t))
	files := shortTempDir(t)
	kernel := filepath.Join(files, "vmlinux")
	base := filepath.Join(files, "base.img")
	private := filepath.Join(files, "private.img")
	rootfs := filepath.Join(files, "rootfs.img")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.WriteFile(base, []byte("read-only image"), 0o644)
	os.WriteFile(private, []byte("root-only image"), 0o600)
	os.WriteFile(rootfs, []byte("writable image"), 0o644)

	spec := TemplateSpec{
		ID: "owner", SnapshotDir: filepath.Join(shortTempDir(t), "snaps"), Stack: testStack,
		KernelImage: kernel,
		Drives: []TemplateDrive{
			{DriveID: "rootfs", Path: rootfs, Root: true},
			{DriveID: "base", Path: base, ReadOnly: true},
			{DriveID: "private", Path: private, ReadOnly: true},
		},
	}
	snap, err := p.Template(context.Background(), spec)
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	insts := restoreClones(t, p, snap, 2)

	for _, path := range []string{kernel, base, private, rootfs} {
		if uid, _, _ := fileOwner(t, path); uid != 0 {
			t.Errorf("operator file %s now belongs to uid %d, want 0", path, uid)
		}
	}
	snapFiles := []string{"vmstate", "mem", "drives/rootfs.img", "drives/private.img"}
	for _, name := range snapFiles {
		uid, _, mode := fileOwner(t, filepath.Join(snap.Path, name))
		if uid != 0 {
			t.Errorf("snapshot file %s belongs to uid %d, want 0", name, uid)
		}
		if mode&0o022 != 0 {
			t.Errorf("snapshot file %s has mode %o, writable by others", name, mode)
		}
	}
	// The jailed VMM cannot read a 0600 root file, so it gets a private copy.
	if _, _, mode := fileOwner(t, private); mode != 0o600 {
		t.Errorf("private image mode changed to %o", mode)
	}
	destroyAll(t, p, insts)
	checkNothingLeft(t, p)
}

func TestMetadataRejectsEscapingFiles(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "escape", "")
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Metadata)
	}{
		{"state file", func(m *Metadata) { m.StateFile = "../../../../etc/hostname" }},
		{"memory file", func(m *Metadata) { m.MemFile = "../victim" }},
		{"absolute memory file", func(m *Metadata) { m.MemFile = "/etc/hostname" }},
		{"empty state file", func(m *Metadata) { m.StateFile = "" }},
	} {
		bad := meta
		tc.edit(&bad)
		if err := writeMetadata(snap.Path, bad); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadMetadata(snap.Path); err == nil {
			t.Errorf("%s: ReadMetadata accepted state_file %q mem_file %q", tc.name, bad.StateFile, bad.MemFile)
		}
	}
	writeMetadata(snap.Path, meta)
	checkNothingLeft(t, p)
}

func TestRestoreRejectsSymlinkedFiles(t *testing.T) {
	p := newTestProvider(t, jailerConfig(t))
	snap := makeTemplate(t, p, "symlink", "")
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	victims := shortTempDir(t)
	victim := filepath.Join(victims, "victim")
	os.WriteFile(victim, []byte("secret"), 0o600)

	for _, tc := range []struct {
		name string
		rel  string
		edit func(*Metadata)
	}{
		{"read-only drive", "drives/ro.img", func(m *Metadata) {
			m.Drives = append(m.Drives, MetadataDrive{DriveID: "ro", Path: "drives/ro.img", ReadOnly: true})
		}},
		{"writable drive", "drives/rw.img", func(m *Metadata) {
			m.Drives = append(m.Drives, MetadataDrive{DriveID: "rw", Path: "drives/rw.img"})
		}},
		{"memory file", "mem2", func(m *Metadata) { m.MemFile = "mem2" }},
		{"linked directory", "linked/x.img", func(m *Metadata) {
			m.Drives = append(m.Drives, MetadataDrive{DriveID: "x", Path: "linked/x.img"})
		}},
	} {
		link := filepath.Join(snap.Path, tc.rel)
		if dir := filepath.Dir(tc.rel); dir == "linked" {
			os.WriteFile(filepath.Join(victims, "x.img"), []byte("secret"), 0o600)
			os.Symlink(victims, filepath.Join(snap.Path, dir))
		} else if err := os.Symlink(victim, link); err != nil {
			t.Fatal(err)
		}
		bad := meta
		bad.Drives = append([]MetadataDrive(nil), meta.Drives...)
		tc.edit(&bad)
		writeMetadata(snap.Path, bad)

		inst, err := p.Restore(context.Background(), "symlink-0", testStack, snap)
		if err == nil {
			p.Destroy(context.Background(), inst)
		}
		if err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("%s: restore through a symbolic link: err = %v, want a symbolic link error", tc.name, err)
		}
		if uid, _, _ := fileOwner(t, victim); uid != 0 {
			t.Errorf("%s: victim now belongs to uid %d", tc.name, uid)
			os.Chown(victim, 0, 0)
		}
		os.Remove(link)
		os.Remove(filepath.Join(snap.Path, "linked"))
		checkNothingLeft(t, p)
	}
	writeMetadata(snap.Path, meta)
}

func TestDestroyIgnoresRecordInChroot(t *testing.T) {
	cfg := jailerConfig(t)
	cfg.Detached = true
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "record", "")
	insts := restoreClones(t, p, snap, 1)
	if t.Failed() {
		return
	}
	victim := uniqueTAP(t)
	if out, err := exec.Command("ip", "tuntap", "add", "dev", victim, "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("create victim TAP: %v %s", err, out)
	}
	defer exec.Command("ip", "link", "delete", "dev", victim).Run()

	// The jailed uid owns the chroot, so it can write any file there.
	forged, _ := json.Marshal(vmRecord{PID: insts[0].PID, TAPs: []string{victim}})
	if err := os.WriteFile(filepath.Join(insts[0].Dir, recordName), forged, 0o644); err != nil {
		t.Fatal(err)
	}
	p2 := newTestProvider(t, cfg)
	if err := p2.Destroy(context.Background(), vm.Instance{ID: insts[0].ID}); err != nil {
		t.Errorf("destroy by id: %v", err)
	}
	if !linkExists("", victim) {
		t.Errorf("destroy deleted host TAP %s named by a record in the chroot", victim)
	}
	p.mu.Lock()
	clear(p.vms)
	p.mu.Unlock()
	checkNothingLeft(t, p2)
}
