package qemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// Files of a snapshot directory. Once the template is written, the
// provider never opens them for writing: clones map MemoryFile privately
// (copy-on-write) and read the others. All of them are mode 0444.
//
// NOTE: QEMU 7.2 still opens MemoryFile read-write for a private mapping,
// and as root it ignores the file mode. Its memory-backend-file option
// readonly=on maps guest RAM read-only, which a running guest cannot use,
// so ReadMetadata checks the file's size before every restore instead.
const (
	MetadataFile = "snapshot.json"
	MemoryFile   = "memory"
	StateFile    = "state"
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
)

// metadataFormat is the version of the Metadata layout. Format 1 stored
// the raw QEMU arguments and is no longer read.
const metadataFormat = 2

// Metadata describes a template snapshot. It is stored as MetadataFile in
// the snapshot directory. It holds no QEMU arguments: a clone's command
// line is rebuilt from Key and Accel by the provider's code, so an edited
// file cannot add options to it.
type Metadata struct {
	Format int `json:"format"`
	// Provider is always ProviderName. It lets a reader tell this file
	// from another provider's.
	Provider string      `json:"provider"`
	Key      vm.StackKey `json:"key"`
	// Accel is the acceleration the template booted under. Clones use it
	// too, because device state saved under KVM does not load under TCG.
	Accel string `json:"accel"`
	// QEMUVersion is the version reported over QMP by the QEMU that wrote
	// the snapshot.
	QEMUVersion string    `json:"qemu_version"`
	CreatedAt   time.Time `json:"created_at"`
}

// Validate reports the first field of m that a clone cannot be restored
// from.
func (m Metadata) Validate() error {
	if m.Format != metadataFormat {
		return fmt.Errorf("unsupported format %d: this provider reads format %d, so create the template again",
			m.Format, metadataFormat)
	}
	if m.Provider != ProviderName {
		return fmt.Errorf("snapshot was made by provider %q, not %q", m.Provider, ProviderName)
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
	return nil
}

// machineArgs returns the device arguments that the template ran with and
// that every clone of it runs with.
func (m Metadata) machineArgs() []string {
	return machineArgs(m.Key, m.Accel, KernelFile, InitrdFile)
}

// memorySize is the size in bytes of the memory file of a template with m.
func (m Metadata) memorySize() int64 {
	return int64(m.Key.MemoryMiB) << 20
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

// ReadMetadata reads and validates the metadata of the snapshot in dir and
// checks that its files are regular files, with a memory file of the size
// the metadata implies. It rejects unknown fields, so a file that was
// written for another format or edited by hand is reported.
func ReadMetadata(dir string) (Metadata, error) {
	path := filepath.Join(dir, MetadataFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return Metadata{}, fmt.Errorf("snapshot metadata: %w%s", err, describeOtherSnapshot(dir))
	}

	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		// An older or foreign file fails on an unknown field first, so
		// report its format or provider when those decode.
		var header struct {
			Format   int    `json:"format"`
			Provider string `json:"provider"`
		}
		if json.Unmarshal(b, &header) == nil && (header.Format != metadataFormat || header.Provider != ProviderName) {
			m = Metadata{Format: header.Format, Provider: header.Provider}
			if verr := m.Validate(); verr != nil {
				return Metadata{}, fmt.Errorf("snapshot metadata %s: %w", path, verr)
			}
		}
		return Metadata{}, fmt.Errorf("snapshot metadata %s: invalid JSON: %w", path, err)
	}
	if err := m.Validate(); err != nil {
		return Metadata{}, fmt.Errorf("snapshot metadata %s: %w", path, err)
	}

	for _, name := range []string{MemoryFile, StateFile, KernelFile, InitrdFile} {
		info, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			return Metadata{}, fmt.Errorf("snapshot %s: %w", dir, err)
		}
		if !info.Mode().IsRegular() {
			return Metadata{}, fmt.Errorf("snapshot %s: %s is a %s, not a regular file", dir, name, info.Mode().Type())
		}
		if name == MemoryFile && info.Size() != m.memorySize() {
			return Metadata{}, fmt.Errorf("snapshot %s: memory file has %d bytes, want %d for %d MiB: the snapshot is damaged, create it again",
				dir, info.Size(), m.memorySize(), m.Key.MemoryMiB)
		}
	}
	return m, nil
}

// describeOtherSnapshot names the provider whose snapshot dir contains, for
// an error about a missing MetadataFile, or returns "".
func describeOtherSnapshot(dir string) string {
	// The Firecracker provider writes this file into its snapshots.
	if _, err := os.Stat(filepath.Join(dir, "warmpool-snapshot.json")); err == nil {
		return fmt.Sprintf(": %s contains a firecracker snapshot, not a qemu one", dir)
	}
	return ""
}

func writeMetadata(dir string, m Metadata) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, MetadataFile), append(b, '\n'), 0o444)
}
