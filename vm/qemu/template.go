package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// Template is a snapshot written by CreateTemplate.
type Template struct {
	Snapshot vm.Snapshot
	Metadata Metadata
	// BootTime is the cold boot until the agent reported ready, and
	// SaveTime the pause and migration of the device state to a file.
	BootTime, SaveTime time.Duration
}

// CreateTemplate boots the configured guest with key's machine shape and
// saves it as a snapshot in dir, which must not exist yet. The snapshot is
// written in a temporary sibling directory that is renamed to dir at the
// end, so dir never holds a partial snapshot.
//
// With Accel auto, the guest boots under KVM when /dev/kvm opens. If QEMU
// fails under KVM or the guest is not ready within KVMBootTimeout, it
// boots again under TCG and the provider logs one warning.
func (p *Provider) CreateTemplate(ctx context.Context, key vm.StackKey, dir string) (Template, error) {
	if err := key.Validate(); err != nil {
		return Template{}, fmt.Errorf("qemu template: %w", err)
	}
	if p.cfg.Kernel == "" {
		return Template{}, errors.New("qemu template: missing kernel and initrd in the provider config")
	}
	if !filepath.IsAbs(dir) {
		return Template{}, fmt.Errorf("qemu template: output directory %q must be an absolute path", dir)
	}
	if _, err := os.Lstat(dir); err == nil {
		return Template{}, fmt.Errorf("qemu template: output directory %s already exists: remove it or choose another", dir)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return Template{}, fmt.Errorf("qemu template: %w", err)
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return Template{}, fmt.Errorf("qemu template: %w", err)
	}
	defer os.RemoveAll(tmp)

	if err := copyFile(p.cfg.Kernel, filepath.Join(tmp, KernelFile)); err != nil {
		return Template{}, fmt.Errorf("qemu template: copy kernel: %w", err)
	}
	if err := copyFile(p.cfg.Initrd, filepath.Join(tmp, InitrdFile)); err != nil {
		return Template{}, fmt.Errorf("qemu template: copy initrd: %w", err)
	}

	t, err := p.bootAndSave(ctx, key, tmp)
	if err != nil {
		return Template{}, fmt.Errorf("qemu template %s: %w", key, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return Template{}, fmt.Errorf("qemu template: %w", err)
	}
	t.Snapshot = vm.Snapshot{
		ID:       fmt.Sprintf("%s-%s-%dcpu-%dmib-%s", key.Name, key.Version, key.VCPUs, key.MemoryMiB, t.Metadata.Accel),
		Provider: ProviderName,
		Path:     dir,
	}
	return t, nil
}

// bootAndSave boots the template VM under the configured acceleration,
// falling back from KVM to TCG for Accel auto, and saves it into dir.
func (p *Provider) bootAndSave(ctx context.Context, key vm.StackKey, dir string) (Template, error) {
	accel := p.cfg.Accel
	if accel == AccelAuto {
		accel = AccelTCG
		if checkKVM() == nil {
			t, err := p.bootAndSaveWith(ctx, key, dir, AccelKVM, p.cfg.KVMBootTimeout)
			if err == nil || ctx.Err() != nil {
				return t, err
			}
			p.log.Warn("guest did not boot under KVM, falling back to TCG", "error", err,
				"kvm_boot_timeout", p.cfg.KVMBootTimeout)
			if err := os.Remove(filepath.Join(dir, MemoryFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return Template{}, err
			}
		}
	}
	return p.bootAndSaveWith(ctx, key, dir, accel, p.cfg.BootTimeout)
}

func (p *Provider) bootAndSaveWith(ctx context.Context, key vm.StackKey, dir, accel string, bootTimeout time.Duration) (Template, error) {
	id, err := templateVMID()
	if err != nil {
		return Template{}, err
	}
	args := Metadata{Key: key, Accel: accel}.machineArgs()

	start := time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	m, err := p.launch(bootCtx, id, launchSpec{
		workDir:     dir,
		machineArgs: args,
		memoryMiB:   key.MemoryMiB,
		memoryPath:  filepath.Join(dir, MemoryFile),
		shared:      true,
	})
	if err != nil {
		return Template{}, fmt.Errorf("boot under %s: %w", accel, err)
	}
	defer p.discard(m)

	if err := m.mon.run(bootCtx, "cont", nil, nil); err != nil {
		return Template{}, fmt.Errorf("boot under %s: %w%s", accel, err, m.proc.output())
	}
	if err := m.agent.waitReady(bootCtx); err != nil {
		return Template{}, fmt.Errorf("boot under %s: %w%s", accel, err, m.proc.output())
	}
	bootTime := time.Since(start)

	start = time.Now()
	if err := save(ctx, m, filepath.Join(dir, StateFile)); err != nil {
		return Template{}, fmt.Errorf("save: %w%s", err, m.proc.output())
	}
	saveTime := time.Since(start)

	meta := Metadata{
		Format:      metadataFormat,
		Provider:    ProviderName,
		Key:         key,
		Accel:       accel,
		QEMUVersion: m.mon.version,
		CreatedAt:   time.Now().UTC(),
	}
	if err := meta.Validate(); err != nil {
		return Template{}, fmt.Errorf("metadata: %w", err)
	}
	if err := writeMetadata(dir, meta); err != nil {
		return Template{}, fmt.Errorf("metadata: %w", err)
	}
	p.log.Info("created qemu template", "stack", key.String(), "accel", accel,
		"boot_time", bootTime, "save_time", saveTime)
	return Template{Metadata: meta, BootTime: bootTime, SaveTime: saveTime}, nil
}

// save pauses the VM and migrates its device state to statePath. Guest RAM
// stays in the shared memory file because of x-ignore-shared.
func save(ctx context.Context, m *machine, statePath string) error {
	if err := m.mon.run(ctx, "stop", nil, nil); err != nil {
		return err
	}
	if err := m.mon.setIgnoreShared(ctx); err != nil {
		return err
	}
	uri := "exec:cat > " + shellQuote(statePath)
	if err := m.mon.run(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return err
	}
	if err := m.mon.waitMigration(ctx); err != nil {
		return err
	}
	if err := os.Chmod(statePath, 0o444); err != nil {
		return err
	}
	return os.Chmod(filepath.Join(filepath.Dir(statePath), MemoryFile), 0o444)
}

func templateVMID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "template-" + hex.EncodeToString(b), nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()

	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
