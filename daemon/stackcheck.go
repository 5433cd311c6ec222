package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"

	"github.com/warmpool/warmpool/vm"
)

// checkSnapshot returns an error if snap can never be restored for key.
// Providers without CheckSnapshot get a smaller check: the snapshot path
// must be a directory.
func (d *Daemon) checkSnapshot(key vm.StackKey, snap vm.Snapshot) error {
	if checker, ok := d.provider.(vm.SnapshotChecker); ok {
		return checker.CheckSnapshot(key, snap)
	}
	info, err := os.Stat(snap.Path)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("snapshot %s is not a directory", snap.Path)
	}
	return nil
}

// checkStacks runs checkSnapshot on each stack and returns one error that
// names every stack that fails.
func (d *Daemon) checkStacks(stacks []StackConfig) error {
	var errs []error
	kind := d.provider.Name()
	for i, s := range stacks {
		if err := d.checkSnapshot(s.Key, s.snapshot(kind)); err != nil {
			errs = append(errs, fmt.Errorf("stacks[%d] (%s): %w", i, s.Key, err))
		}
	}
	return errors.Join(errs...)
}

// checkBinary returns an error naming field unless binary resolves to an
// executable through PATH or as a path.
func checkBinary(field, binary string) error {
	if _, err := exec.LookPath(binary); err != nil {
		return fmt.Errorf("%s %q: %w: install it or set the full path", field, binary, err)
	}
	return nil
}

// stacksNeverWarm returns the configured stacks that have never had a warm
// VM and whose restores have failed. Such a stack cannot serve an acquire,
// so /readyz reports the daemon as not ready until a restore succeeds. A
// retry in flight does not change that, so readiness does not flap
// between backoffs.
func (d *Daemon) stacksNeverWarm() []string {
	configured := make(map[vm.StackKey]bool)
	for _, s := range d.config().Stacks {
		configured[s.Key] = true
	}
	var keys []string
	for _, b := range d.pool.Stats().Buckets {
		neverWarm := b.Warm == 0 && b.RestoresOK == 0 && b.Hits == 0
		if configured[b.Key] && neverWarm && b.RestoresFailed > 0 {
			keys = append(keys, b.Key.String())
		}
	}
	return keys
}

func (d *Daemon) handleReady(w http.ResponseWriter, r *http.Request) {
	if !d.ready.Load() {
		writeError(w, &apiError{status: http.StatusServiceUnavailable, msg: "not ready: starting or stopping"})
		return
	}
	if keys := d.stacksNeverWarm(); len(keys) > 0 {
		writeError(w, &apiError{status: http.StatusServiceUnavailable,
			msg: "not ready: restores keep failing for stacks that have never had a warm VM: " +
				strings.Join(keys, ", ") + ": see last_error in GET /v1/pools"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
