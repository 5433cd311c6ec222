package qemu

import (
	"fmt"
	"path/filepath"

	"github.com/warmpool/warmpool/vm"
)

// CheckSnapshot returns an error if snap can never be restored for key on
// this host. That is the case when another provider made it, its metadata
// or files are invalid, its machine shape differs from key, or it needs KVM
// and KVM does not open. It reads the snapshot's metadata and stats its files, and
// starts no VM.
func (p *Provider) CheckSnapshot(key vm.StackKey, snap vm.Snapshot) error {
	if err := key.Validate(); err != nil {
		return err
	}
	_, err := readSnapshotFor(key, snap)
	return err
}

// readSnapshotFor reads snap's metadata and checks that a clone for key
// can be restored from it.
func readSnapshotFor(key vm.StackKey, snap vm.Snapshot) (Metadata, error) {
	if snap.Provider != "" && snap.Provider != ProviderName {
		return Metadata{}, fmt.Errorf("snapshot %s was made by provider %q", snap.ID, snap.Provider)
	}
	if !filepath.IsAbs(snap.Path) {
		return Metadata{}, fmt.Errorf("snapshot path %q must be an absolute directory", snap.Path)
	}
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		return Metadata{}, err
	}
	if err := meta.CheckKey(key); err != nil {
		return Metadata{}, err
	}
	if meta.Accel == AccelKVM {
		if err := checkKVM(); err != nil {
			return Metadata{}, fmt.Errorf("snapshot needs KVM: %w", err)
		}
	}
	return meta, nil
}
