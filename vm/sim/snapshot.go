package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/warmpool/warmpool/vm"
)

// SnapshotFile is the file in a sim snapshot directory that records the
// stack the snapshot was made for. The warmpool CLI writes it when it
// creates a sim snapshot directory.
const SnapshotFile = "sim-snapshot.json"

// snapshotScheme marks a snapshot path that names a purely simulated
// snapshot, which has no files and fits any stack.
const snapshotScheme = "sim://"

// CheckSnapshot returns an error if Restore of snap for key can never give a
// usable VM. A path starting with "sim://" needs a name after the scheme.
// Any other path must be a directory. If that directory contains
// SnapshotFile, the stack recorded there must equal key.
func (p *Provider) CheckSnapshot(key vm.StackKey, snap vm.Snapshot) error {
	if snap.Provider != "" && snap.Provider != p.Name() {
		return fmt.Errorf("sim: snapshot %s was made by provider %q, not sim", snap.Path, snap.Provider)
	}
	if name, ok := strings.CutPrefix(snap.Path, snapshotScheme); ok {
		if name == "" {
			return fmt.Errorf("sim: invalid snapshot path %q: add a name after %s", snap.Path, snapshotScheme)
		}
		return nil
	}

	info, err := os.Stat(snap.Path)
	if err != nil {
		return fmt.Errorf("sim: snapshot: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("sim: snapshot %s is not a directory", snap.Path)
	}
	data, err := os.ReadFile(filepath.Join(snap.Path, SnapshotFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sim: snapshot: %w", err)
	}
	var record struct {
		Stack vm.StackKey `json:"stack"`
	}
	if err := json.Unmarshal(data, &record); err != nil {
		return fmt.Errorf("sim: snapshot: invalid %s in %s: %v", SnapshotFile, snap.Path, err)
	}
	if record.Stack != key {
		return fmt.Errorf("sim: snapshot %s was made for stack %s, not %s", snap.Path, record.Stack, key)
	}
	return nil
}
