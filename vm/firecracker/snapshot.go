package firecracker

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	for _, d := range m.Drives {
		if err := checkInside(dir, filepath.Join(dir, d.Path)); err != nil {
			return m, fmt.Errorf("read snapshot metadata %s: drive %s: %w", dir, d.DriveID, err)
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
// a hard link to each read-only image and a copy of each writable one, so
// that clones never write to a shared file.
func stageDrives(snapDir, vmDir string, drives []MetadataDrive, uid, gid int) error {
	for _, d := range drives {
		src := filepath.Join(snapDir, d.Path)
		dst := filepath.Join(vmDir, d.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		var err error
		if d.ReadOnly {
			err = linkOrCopy(src, dst)
		} else {
			err = cloneFile(src, dst)
		}
		if err != nil {
			return fmt.Errorf("stage drive %s: %w", d.DriveID, err)
		}
		if uid >= 0 {
			if err := os.Chown(dst, uid, gid); err != nil && !d.ReadOnly {
				return fmt.Errorf("stage drive %s: %w", d.DriveID, err)
			}
		}
	}
	return nil
}

// linkOrCopy hard-links src to dst, or copies it when they are on different
// file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return cloneFile(src, dst)
}

// cloneFile copies src to dst, sharing blocks (FICLONE) where the file
// system supports it.
func cloneFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
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
