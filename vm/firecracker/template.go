package firecracker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// TemplateSpec describes the VM that Template boots and snapshots.
type TemplateSpec struct {
	// ID names the snapshot and its directory under SnapshotDir: 1-128
	// letters, digits, '.', '_' or '-'. A new stack version needs a new
	// ID, because Template never overwrites a snapshot.
	ID          string      `yaml:"id"`
	SnapshotDir string      `yaml:"snapshot_dir"`
	Stack       vm.StackKey `yaml:"stack"`

	KernelImage string `yaml:"kernel_image"`
	InitrdPath  string `yaml:"initrd,omitempty"`
	BootArgs    string `yaml:"boot_args,omitempty"`

	Drives  []TemplateDrive        `yaml:"drives"`
	Network []api.NetworkInterface `yaml:"network,omitempty"`
	// VsockCID is the guest's vsock context id, 3 when 0.
	VsockCID int  `yaml:"vsock_cid,omitempty"`
	Entropy  bool `yaml:"entropy,omitempty"`
}

// TemplateDrive is a block device of the template VM. Template copies a
// writable image, so the file at Path is never changed.
type TemplateDrive struct {
	DriveID  string `yaml:"drive_id"`
	Path     string `yaml:"path"`
	Root     bool   `yaml:"root"`
	ReadOnly bool   `yaml:"read_only"`
}

var (
	snapshotIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	driveIDPattern    = regexp.MustCompile(`^[A-Za-z0-9_]{1,32}$`)
)

// Validate reports the first invalid field of s.
func (s TemplateSpec) Validate() error {
	if !snapshotIDPattern.MatchString(s.ID) {
		return fmt.Errorf("template: invalid id %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", s.ID)
	}
	if !filepath.IsAbs(s.SnapshotDir) {
		return fmt.Errorf("template: snapshot_dir %q must be an absolute path", s.SnapshotDir)
	}
	if err := s.Stack.Validate(); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if s.Stack.VCPUs != 1 && s.Stack.VCPUs%2 != 0 || s.Stack.VCPUs > 32 {
		return fmt.Errorf("template: invalid vcpus %d: Firecracker takes 1 or an even number up to 32", s.Stack.VCPUs)
	}
	if s.KernelImage == "" {
		return errors.New("template: missing kernel_image")
	}
	roots := 0
	for _, d := range s.Drives {
		if !driveIDPattern.MatchString(d.DriveID) {
			return fmt.Errorf("template: invalid drive_id %q: use 1-32 letters, digits or '_'", d.DriveID)
		}
		if d.Path == "" {
			return fmt.Errorf("template: drive %s: missing path", d.DriveID)
		}
		if d.Root {
			roots++
		}
	}
	if roots > 1 {
		return fmt.Errorf("template: %d drives are marked root, at most one may be", roots)
	}
	for _, n := range s.Network {
		if n.IfaceID == "" || n.HostDevName == "" || len(n.HostDevName) > 15 {
			return fmt.Errorf("template: network interface %q: iface_id and a host_dev_name of 1-15 bytes are required", n.IfaceID)
		}
		// The API description (v1.16.1) allows an mtu of 68 to 65535.
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			return fmt.Errorf("template: network interface %q: invalid mtu %d: use 68-65535, or 0 for the guest's default", n.IfaceID, n.MTU)
		}
	}
	// CIDs 0-2 are reserved for the hypervisor and the host.
	if s.VsockCID != 0 && s.VsockCID < 3 {
		return fmt.Errorf("template: invalid vsock_cid %d: use 3 or more, or 0 for 3", s.VsockCID)
	}
	return nil
}

// Template cold-boots a VM from spec, waits until its guest agent replies to a ping,
// pauses it and writes a full snapshot to SnapshotDir/ID together with a
// metadata file. The template VM is destroyed in all cases. The snapshot
// directory appears only once it is complete.
func (p *Provider) Template(ctx context.Context, spec TemplateSpec) (vm.Snapshot, error) {
	if err := spec.Validate(); err != nil {
		return vm.Snapshot{}, err
	}
	snap, err := p.template(ctx, spec)
	if err != nil {
		return vm.Snapshot{}, fmt.Errorf("firecracker: template %s: %w", spec.ID, err)
	}
	return snap, nil
}

func (p *Provider) template(ctx context.Context, spec TemplateSpec) (snap vm.Snapshot, err error) {
	final := filepath.Join(spec.SnapshotDir, spec.ID)
	if _, err := os.Stat(final); err == nil {
		return snap, fmt.Errorf("snapshot directory %s already exists: use a new id for a new snapshot", final)
	}
	if err := os.MkdirAll(spec.SnapshotDir, 0o755); err != nil {
		return snap, err
	}

	// The template VM's id derives from the snapshot path, so a template
	// left behind by a crashed run is found and removed first, and a
	// second template of the same path fails while the first runs.
	sum := sha256.Sum256([]byte(final))
	vmID := "template-" + hex.EncodeToString(sum[:8])
	ctx, release, err := p.claim(ctx, vmID)
	if err != nil {
		return snap, fmt.Errorf("template of %s: %w", final, err)
	}
	defer release()
	if err := p.teardown(ctx, p.recover(vm.Instance{ID: vmID})); err != nil {
		return snap, fmt.Errorf("remove the leftover template VM: %w", err)
	}
	m, err := p.prepare(ctx, vmID, "", spec.Network, false)
	if m != nil {
		defer func() { err = errors.Join(err, p.teardown(context.WithoutCancel(ctx), m)) }()
	}
	if err != nil {
		return snap, err
	}

	meta := Metadata{Format: metadataFormat, ID: spec.ID, Stack: spec.Stack, StateFile: "vmstate", MemFile: "mem"}
	uid, gid := p.owner()
	if err := copyTemplateDrives(spec, m.dir, &meta, uid, gid); err != nil {
		return snap, err
	}
	if err := p.startVMM(ctx, m, nil, ""); err != nil {
		return snap, err
	}
	if err := p.bootTemplate(ctx, m, spec, &meta); err != nil {
		return snap, m.proc.failure(err)
	}

	healthCtx, cancel := context.WithTimeout(ctx, p.cfg.HealthTimeout)
	defer cancel()
	if err := waitHealthy(healthCtx, m.proc, m.vsockPath, p.cfg.AgentPort); err != nil {
		return snap, fmt.Errorf("wait for guest agent: %w", err)
	}

	if err := p.snapshotTemplate(ctx, m, &meta); err != nil {
		return snap, m.proc.failure(err)
	}
	if err := p.stop(ctx, m); err != nil {
		return snap, err
	}
	if err := publishSnapshot(m.dir, final, meta, uid, gid); err != nil {
		return snap, err
	}
	return vm.Snapshot{ID: spec.ID, Provider: ProviderName, Path: final}, nil
}

// copyTemplateDrives puts each drive image into the template's directory
// under a relative path, which the snapshot then records, so every clone
// opens its own image in its own directory. A read-only image is shared
// with shareFile and a writable one copied, so the operator's files keep
// their content and owner.
func copyTemplateDrives(spec TemplateSpec, dir string, meta *Metadata, uid, gid int) error {
	if err := os.MkdirAll(filepath.Join(dir, drivesDirName), 0o755); err != nil {
		return err
	}
	for _, d := range spec.Drives {
		rel := filepath.Join(drivesDirName, d.DriveID+".img")
		src, err := filepath.EvalSymlinks(d.Path)
		if err != nil {
			return fmt.Errorf("copy drive %s: %w", d.DriveID, err)
		}
		if d.ReadOnly {
			err = shareFile(src, filepath.Join(dir, rel), uid, gid)
		} else {
			err = privateCopy(src, filepath.Join(dir, rel), uid, gid)
		}
		if err != nil {
			return fmt.Errorf("copy drive %s: %w", d.DriveID, err)
		}
		meta.Drives = append(meta.Drives, MetadataDrive{DriveID: d.DriveID, Path: rel, ReadOnly: d.ReadOnly})
	}
	return nil
}

// bootTemplate configures the fresh VMM from spec and starts the guest.
func (p *Provider) bootTemplate(ctx context.Context, m *machine, spec TemplateSpec, meta *Metadata) error {
	c := m.client
	info, err := c.Describe(ctx)
	if err != nil {
		return err
	}
	meta.FirecrackerVersion = info.VMMVersion

	kernel, initrd := spec.KernelImage, spec.InitrdPath
	if p.cfg.Jailer != nil {
		uid, gid := p.owner()
		if kernel, initrd, err = linkBootFiles(m.dir, kernel, initrd, uid, gid); err != nil {
			return err
		}
	}

	meta.Machine = api.MachineConfig{VCPUCount: spec.Stack.VCPUs, MemSizeMiB: spec.Stack.MemoryMiB}
	if err := c.PutMachineConfig(ctx, meta.Machine); err != nil {
		return err
	}
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: spec.BootArgs}); err != nil {
		return err
	}
	for i, d := range spec.Drives {
		drive := api.Drive{DriveID: d.DriveID, PathOnHost: meta.Drives[i].Path, IsRootDevice: d.Root, IsReadOnly: d.ReadOnly}
		if err := c.PutDrive(ctx, drive); err != nil {
			return err
		}
	}
	for _, n := range spec.Network {
		if err := c.PutNetworkInterface(ctx, n); err != nil {
			return err
		}
		meta.Network = append(meta.Network, n)
	}
	cid := spec.VsockCID
	if cid == 0 {
		cid = 3
	}
	meta.Vsock = &api.Vsock{GuestCID: cid, UDSPath: vsockName}
	if err := c.PutVsock(ctx, *meta.Vsock); err != nil {
		return err
	}
	if spec.Entropy {
		if err := c.PutEntropy(ctx, api.Entropy{}); err != nil {
			return err
		}
	}
	return c.InstanceStart(ctx)
}

// linkBootFiles makes the kernel and initrd readable inside the chroot at
// root, with shareFile, and returns their paths inside it.
func linkBootFiles(root, kernel, initrd string, uid, gid int) (string, string, error) {
	var inside []string
	for _, path := range []string{kernel, initrd} {
		if path == "" {
			inside = append(inside, "")
			continue
		}
		src, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", "", err
		}
		dst := filepath.Join(root, filepath.Base(path))
		if err := shareFile(src, dst, uid, gid); err != nil {
			return "", "", fmt.Errorf("link %s into chroot: %w", path, err)
		}
		inside = append(inside, "/"+filepath.Base(path))
	}
	return inside[0], inside[1], nil
}

// snapshotTemplate pauses the VM and writes its snapshot into the VM
// directory, under the relative load directory.
func (p *Provider) snapshotTemplate(ctx context.Context, m *machine, meta *Metadata) error {
	if err := os.MkdirAll(filepath.Join(m.dir, loadDirName), 0o755); err != nil {
		return err
	}
	if uid, gid := p.owner(); uid >= 0 {
		os.Chown(filepath.Join(m.dir, loadDirName), uid, gid)
	}
	if err := m.client.Pause(ctx); err != nil {
		return err
	}
	meta.CreatedAt = time.Now().UTC()
	// A large memory file takes a while to write: allow more than one call.
	createCtx := api.WithCallTimeout(ctx, 10*p.cfg.APITimeout)
	return m.client.CreateSnapshot(createCtx, api.SnapshotCreate{
		SnapshotPath: filepath.Join(loadDirName, meta.StateFile),
		MemFilePath:  filepath.Join(loadDirName, meta.MemFile),
		SnapshotType: "Full",
	})
}

// publishSnapshot moves the snapshot files and drive images from the
// template's directory into a temporary directory beside final, takes back
// the files the jailed VMM owns (see reownSnapshotFiles), writes the
// metadata and renames the directory to final.
func publishSnapshot(vmDir, final string, meta Metadata, uid, gid int) (err error) {
	tmp, err := os.MkdirTemp(filepath.Dir(final), "."+filepath.Base(final)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	moves := map[string]string{
		filepath.Join(vmDir, loadDirName, meta.StateFile): filepath.Join(tmp, meta.StateFile),
		filepath.Join(vmDir, loadDirName, meta.MemFile):   filepath.Join(tmp, meta.MemFile),
		filepath.Join(vmDir, drivesDirName):               filepath.Join(tmp, drivesDirName),
	}
	for src, dst := range moves {
		if err := moveFile(src, dst); err != nil {
			return fmt.Errorf("move %s into the snapshot directory: %w", filepath.Base(src), err)
		}
	}
	if err := reownSnapshotFiles(tmp, uid, gid); err != nil {
		return err
	}
	if err := writeMetadata(tmp, meta); err != nil {
		return err
	}
	return os.Rename(tmp, final)
}

// reownSnapshotFiles checks that dir contains only directories and regular
// files. In jailer mode (uid >= 0) it gives each file that uid owns to this
// process's user and group gid, mode 0640, so that clones, which run as
// uid, can read but not change the files that every clone shares. A file
// that uid owns with more than one link is rejected, because its other
// link would stay writable by the jailed VMM.
func reownSnapshotFiles(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("snapshot file %s is not a regular file (mode %v)", path, info.Mode())
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if uid < 0 || !ok || int(st.Uid) != uid {
			return nil
		}
		if st.Nlink != 1 {
			return fmt.Errorf("snapshot file %s has %d links: the jailed VMM may have linked it elsewhere", path, st.Nlink)
		}
		if err := os.Lchown(path, os.Geteuid(), gid); err != nil {
			return err
		}
		return os.Chmod(path, 0o640)
	})
}

// moveFile renames src to dst, or copies a regular file across file systems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil {
		return nil
	}
	info, statErr := os.Stat(src)
	if statErr != nil || info.IsDir() {
		return err
	}
	if err := cloneFile(src, dst, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Remove(src)
}
