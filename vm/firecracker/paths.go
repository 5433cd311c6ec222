package firecracker

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/warmpool/warmpool/vm"
)

// File names inside a VM directory. Firecracker resolves the relative vsock
// path against its working directory, which is the VM directory, so clones
// of one snapshot get distinct vsock sockets without any override.
const (
	apiSocketName = "firecracker.sock"
	vsockName     = "vsock.sock"
	pidFileName   = "firecracker.pid"
	outputName    = "firecracker.out"
	drivesDirName = "drives"
	loadDirName   = "snapshot"
)

// vmDir returns the directory of VM id: under StateDir, or the jailer's
// chroot when the jailer is on. The id must have passed vm.ValidateID.
func (c Config) vmDir(id string) string {
	if c.Jailer != nil {
		return filepath.Join(c.jailDir(id), "root")
	}
	return filepath.Join(c.StateDir, "vms", id)
}

// recordDir returns the directory of VM id's record file. With the jailer
// it lies outside the chroot, where the jailed uid cannot change what
// Destroy trusts. Without jailer it is the VM directory.
func (c Config) recordDir(id string) string {
	return filepath.Join(c.StateDir, "vms", id)
}

// jailDir is the directory the jailer creates for VM id.
func (c Config) jailDir(id string) string {
	return filepath.Join(c.Jailer.ChrootBaseDir, filepath.Base(c.FirecrackerBin), id)
}

// ownedDir returns the directory that Destroy removes for VM id, after
// checking that id is valid and that the directory stays inside its base.
func (c Config) ownedDir(id string) (string, error) {
	if err := vm.ValidateID(id); err != nil {
		return "", err
	}
	base := filepath.Join(c.StateDir, "vms")
	dir := filepath.Join(base, id)
	if c.Jailer != nil {
		base = filepath.Join(c.Jailer.ChrootBaseDir, filepath.Base(c.FirecrackerBin))
		dir = c.jailDir(id)
	}
	if err := checkInside(base, dir); err != nil {
		return "", err
	}
	return dir, nil
}

func checkInside(base, path string) error {
	rel, err := filepath.Rel(base, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("path %s escapes directory %s", path, base)
	}
	return nil
}
