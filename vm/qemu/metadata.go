package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// Files of a snapshot directory. Once the template is written, none of
// them is written again: clones map MemoryFile privately (copy-on-write)
// and read the others.
const (
	MetadataFile = "snapshot.json"
	MemoryFile   = "memory"
	StateFile    = "state"
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
)

// metadataFormat is the version of the Metadata layout.
const metadataFormat = 1

// Metadata describes a template snapshot. It is stored as MetadataFile in
// the snapshot directory.
type Metadata struct {
	Format int         `json:"format"`
	Key    vm.StackKey `json:"key"`
	// Accel is the acceleration the template booted under. Clones use it
	// too, because device state saved under KVM does not load under TCG.
	Accel string `json:"accel"`
	// QEMUVersion is the version reported over QMP by the QEMU that wrote
	// the snapshot.
	QEMUVersion string `json:"qemu_version"`
	// MachineArgs are the exact device arguments of the template, which
	// every clone runs with.
	MachineArgs []string  `json:"machine_args"`
	CreatedAt   time.Time `json:"created_at"`
}

// Validate reports the first field of m that a clone cannot be restored
// from.
func (m Metadata) Validate() error {
	if m.Format != metadataFormat {
		return fmt.Errorf("unsupported format %d: this provider reads format %d", m.Format, metadataFormat)
	}
	if err := m.Key.Validate(); err != nil {
		return err
	}
	if m.Accel != AccelKVM && m.Accel != AccelTCG {
		return fmt.Errorf("invalid accel %q: must be kvm or tcg", m.Accel)
	}
	if m.QEMUVersion == "" {
		return errors.New("missing qemu_version")
	}
	if len(m.MachineArgs) == 0 {
		return errors.New("missing machine_args")
	}
	// The arguments come from a file, so reject any that could make QEMU
	// touch host resources beyond the snapshot's own files.
	for _, arg := range m.MachineArgs {
		if strings.HasPrefix(arg, "-") && slices.Contains(forbiddenArgs, arg) {
			return fmt.Errorf("machine_args contains %s, which clones must not run with", arg)
		}
	}
	return nil
}

// forbiddenArgs are QEMU options that a snapshot's machine arguments never
// contain, because the provider sets them itself or they reach outside the
// VM's own files and sockets.
var forbiddenArgs = []string{
	"-incoming", "-object", "-chardev", "-mon", "-qmp", "-monitor",
	"-drive", "-blockdev", "-netdev", "-net", "-fsdev", "-virtfs",
	"-daemonize", "-pidfile", "-runas", "-sandbox", "-readconfig",
}

// CheckKey returns an error when key's machine shape differs from the one
// the snapshot was taken with.
func (m Metadata) CheckKey(key vm.StackKey) error {
	if key.VCPUs != m.Key.VCPUs || key.MemoryMiB != m.Key.MemoryMiB {
		return fmt.Errorf("stack %s does not match the snapshot's %d vCPUs and %d MiB",
			key, m.Key.VCPUs, m.Key.MemoryMiB)
	}
	return nil
}

// ReadMetadata reads and validates the metadata of the snapshot in dir.
func ReadMetadata(dir string) (Metadata, error) {
	path := filepath.Join(dir, MetadataFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return Metadata{}, fmt.Errorf("snapshot metadata: %w", err)
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return Metadata{}, fmt.Errorf("snapshot metadata %s: invalid JSON: %w", path, err)
	}
	if err := m.Validate(); err != nil {
		return Metadata{}, fmt.Errorf("snapshot metadata %s: %w", path, err)
	}
	for _, name := range []string{MemoryFile, StateFile, KernelFile, InitrdFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return Metadata{}, fmt.Errorf("snapshot %s: %w", dir, err)
		}
	}
	return m, nil
}

func writeMetadata(dir string, m Metadata) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, MetadataFile), append(b, '\n'), 0o444)
}
