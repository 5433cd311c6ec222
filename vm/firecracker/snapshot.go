package firecracker

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// ProviderName is the provider's name in vm.Snapshot.Provider.
const ProviderName = "firecracker"

// metadataName is the metadata file in a snapshot directory.
const metadataName = "warmpool-snapshot.json"

const metadataFormat = 1

// Metadata describes a snapshot directory: the files Template wrote and the
// devices of the VM it was taken from, which every clone inherits.
type Metadata struct {
	Format             int                    `json:"format"`
	ID                 string                 `json:"id"`
	Stack              vm.StackKey            `json:"stack"`
	FirecrackerVersion string                 `json:"firecracker_version"`
	CreatedAt          time.Time              `json:"created_at"`
	StateFile          string                 `json:"state_file"` // relative to the snapshot directory
	MemFile            string                 `json:"mem_file"`   // relative to the snapshot directory
	Machine            api.MachineConfig      `json:"machine"`
	Drives             []MetadataDrive        `json:"drives"`
	Network            []api.NetworkInterface `json:"network"`
	Vsock              *api.Vsock             `json:"vsock,omitempty"`
}

// MetadataDrive is a block device of the snapshot. Path is relative both to
// the snapshot directory, which contains the image, and to the working
// directory of the VMM, where the snapshot state expects it.
type MetadataDrive struct {
	DriveID  string `json:"drive_id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// ReadMetadata reads the metadata file of the snapshot directory dir.
func ReadMetadata(dir string) (Metadata, error) {
	var m Metadata
	data, err := os.ReadFile(filepath.Join(dir, metadataName))
	if err != nil {
		return m, fmt.Errorf("read snapshot metadata: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("read snapshot metadata %s: %w", dir, err)
	}
	if m.Format != metadataFormat {
		return m, fmt.Errorf("read snapshot metadata %s: unsupported format %d, want %d", dir, m.Format, metadataFormat)
	}
	files := []struct{ name, rel string }{{"state_file", m.StateFile}, {"mem_file", m.MemFile}}
	for _, d := range m.Drives {
		files = append(files, struct{ name, rel string }{"drive " + d.DriveID, d.Path})
	}
	for _, f := range files {
		if f.rel == "" || filepath.IsAbs(f.rel) {
			return m, fmt.Errorf("read snapshot metadata %s: %s %q must be a relative path", dir, f.name, f.rel)
		}
		if err := checkInside(dir, filepath.Join(dir, f.rel)); err != nil {
			return m, fmt.Errorf("read snapshot metadata %s: %s: %w", dir, f.name, err)
		}
	}
	return m, nil
}

func writeMetadata(dir string, m Metadata) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, metadataName), data, 0o644)
}

// stageDrives gives the VM in vmDir its own view of the snapshot's drives:
// a shared read-only image (see shareFile) and a private copy of each
// writable one, so that clones never write to a shared file. In jailer mode
// (uid >= 0) the private copies belong to uid and gid.
func stageDrives(snapDir, vmDir string, drives []MetadataDrive, uid, gid int) error {
	for _, d := range drives {
		src, err := snapshotFile(snapDir, d.Path)
		if err != nil {
			return fmt.Errorf("stage drive %s: %w", d.DriveID, err)
		}
		dst := filepath.Join(vmDir, d.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if d.ReadOnly {
			err = shareFile(src, dst, uid, gid)
		} else {
			err = privateCopy(src, dst, uid, gid)
		}
		if err != nil {
			return fmt.Errorf("stage drive %s: %w", d.DriveID, err)
		}
	}
	return nil
}

// snapshotFile returns the path of rel inside the snapshot directory dir
// after checking that it is a regular file that no symbolic link leads to.
// A changed snapshot directory therefore cannot make the provider link,
// copy or chown a file elsewhere.
func snapshotFile(dir, rel string) (string, error) {
	path := filepath.Join(dir, rel)
	if err := checkInside(dir, path); err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	realPath, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", err
	}
	if realPath != filepath.Join(realDir, rel) {
		return "", fmt.Errorf("snapshot file %s is or passes through a symbolic link", path)
	}
	info, err := os.Lstat(path)
	if err != nil {
		return "", err
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("snapshot file %s is not a regular file (mode %v)", path, info.Mode())
	}
	return path, nil
}

// shareFile makes the read-only file src available at dst without changing
// src. Without jailer (uid < 0), and when the jailed uid or gid can read
// src through its group or other bits, dst is a hard link, or a copy across
// file systems. Otherwise dst is a private copy that belongs to uid and gid.
func shareFile(src, dst string, uid, gid int) error {
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	if uid >= 0 && !readableBy(info, uid, gid) {
		return privateCopy(src, dst, uid, gid)
	}
	return linkOrCopy(src, dst)
}

// readableBy reports whether a process with uid and gid, and no
// supplementary groups, may read the file that info describes.
func readableBy(info os.FileInfo, uid, gid int) bool {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	mode := info.Mode().Perm()
	switch {
	case int(st.Uid) == uid:
		return mode&0o400 != 0
	case int(st.Gid) == gid:
		return mode&0o040 != 0
	default:
		return mode&0o004 != 0
	}
}

// privateCopy copies src to dst with mode 0600, owned by uid and gid when
// uid is not negative.
func privateCopy(src, dst string, uid, gid int) error {
	if err := cloneFile(src, dst, 0o600); err != nil {
		return err
	}
	if uid >= 0 {
		return os.Lchown(dst, uid, gid)
	}
	return nil
}

// linkOrCopy hard-links src to dst, or copies it with the same permission
// bits when they are on different file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	return cloneFile(src, dst, info.Mode().Perm())
}

// cloneFile copies src to a new file dst with permission bits perm,
// sharing blocks (FICLONE) where the file system supports it. It does not
// follow a symbolic link at src.
func cloneFile(src, dst string, perm os.FileMode) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return out.Close()
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// acquireSnapshot counts one more VM that uses the snapshot at path.
func (p *Provider) acquireSnapshot(path string) {
	p.mu.Lock()
	p.snapshotRefs[path]++
	p.mu.Unlock()
}

// releaseSnapshot counts one VM less for path and removes the snapshot
// directory if RemoveSnapshot marked it and no VM uses it any more.
func (p *Provider) releaseSnapshot(path string) error {
	p.mu.Lock()
	p.snapshotRefs[path]--
	remove := false
	if p.snapshotRefs[path] <= 0 {
		delete(p.snapshotRefs, path)
		remove = p.removeWhenUnused[path]
		delete(p.removeWhenUnused, path)
	}
	p.mu.Unlock()
	if remove {
		return removeSnapshotDir(path)
	}
	return nil
}

// RemoveSnapshot deletes the files of snap once no VM restored from it is
// left: at once when none runs, else when Destroy removes the last one.
// Only VMs restored or reattached by this Provider are counted.
func (p *Provider) RemoveSnapshot(snap vm.Snapshot) error {
	if snap.Provider != ProviderName {
		return fmt.Errorf("firecracker: remove snapshot %s: provider is %q, want %q", snap.ID, snap.Provider, ProviderName)
	}
	if _, err := ReadMetadata(snap.Path); err != nil {
		return fmt.Errorf("firecracker: remove snapshot %s: %w", snap.ID, err)
	}
	p.mu.Lock()
	inUse := p.snapshotRefs[snap.Path] > 0
	if inUse {
		p.removeWhenUnused[snap.Path] = true
	}
	p.mu.Unlock()
	if inUse {
		return nil
	}
	return removeSnapshotDir(snap.Path)
}

// SnapshotRefs returns how many VMs of this provider use the snapshot at path.
func (p *Provider) SnapshotRefs(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshotRefs[path]
}

func removeSnapshotDir(path string) error {
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("firecracker: remove snapshot %s: %w", path, err)
	}
	return nil
}
