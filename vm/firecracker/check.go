package firecracker

import (
	"fmt"

	"github.com/warmpool/warmpool/vm"
)

// CheckSnapshot returns an error if snap can never be restored for key: it
// was made by another provider, its metadata is invalid or names files
// outside its directory, or its machine shape differs from key. It reads
// the snapshot's metadata only, and starts no VM.
func (p *Provider) CheckSnapshot(key vm.StackKey, snap vm.Snapshot) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if snap.Provider != ProviderName {
		return fmt.Errorf("snapshot %s was made by provider %q, want %q", snap.ID, snap.Provider, ProviderName)
	}
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		return err
	}
	if meta.Machine.VCPUCount != key.VCPUs || meta.Machine.MemSizeMiB != key.MemoryMiB {
		return fmt.Errorf("snapshot %s has %d vCPUs and %d MiB, stack %s wants %d and %d",
			snap.ID, meta.Machine.VCPUCount, meta.Machine.MemSizeMiB, key, key.VCPUs, key.MemoryMiB)
	}
	return nil
}
