package daemon

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// storeHooks keep the record store in step with the pool: a record is
// written before each restore starts, marked warm when it lands, and
// removed once the VM is destroyed. Each hook blocks for one store write,
// about one fsync, which is small next to a restore.
func (d *Daemon) storeHooks() pool.Hooks {
	return pool.Hooks{
		RestoreStarted: func(id string, key vm.StackKey, snap vm.Snapshot) {
			rec := state.Record{
				Instance:  vm.Instance{ID: id, Stack: key, Snapshot: snap},
				State:     state.Restoring,
				UpdatedAt: d.clock.Now(),
			}
			if err := d.store.Put(rec); err != nil {
				d.log.Error("record restore failed", "vm_id", id, "stack", key.String(), "error", err)
			}
		},
		Restored: func(inst vm.Instance, _ time.Duration) {
			// The VM may already be handed out or destroyed by the time
			// this hook runs, and then its record must stay as it is.
			rec := state.Record{Instance: inst, State: state.Warm, UpdatedAt: d.clock.Now()}
			if _, err := d.store.PutIf(rec, state.Restoring); err != nil {
				d.log.Error("record warm VM failed", "vm_id", inst.ID, "stack", inst.Stack.String(), "error", err)
			}
		},
		RestoreFailed: func(id string, key vm.StackKey, _ error, _, _ time.Duration) {
			// The provider removes what a failed restore started.
			if err := d.store.Delete(id); err != nil {
				d.log.Error("delete record failed", "vm_id", id, "stack", key.String(), "error", err)
			}
			d.notifyRecordsChanged()
		},
		Destroyed: func(inst vm.Instance, _ time.Duration, destroyErr error) {
			d.recordDestroyed(inst, destroyErr)
			d.notifyRecordsChanged()
		},
	}
}

func (d *Daemon) notifyRecordsChanged() {
	select {
	case d.recordsChanged <- struct{}{}:
	default:
	}
}

// recordDestroyed removes the record of a destroyed VM, or marks it
// destroy_failed so that the next start tries again.
func (d *Daemon) recordDestroyed(inst vm.Instance, destroyErr error) {
	if destroyErr != nil {
		rec := state.Record{Instance: inst, State: state.DestroyFailed, UpdatedAt: d.clock.Now()}
		if err := d.store.Put(rec); err != nil {
			d.log.Error("record failed destroy failed", "vm_id", inst.ID, "stack", inst.Stack.String(), "error", err)
		}
		return
	}
	if err := d.store.Delete(inst.ID); err != nil {
		d.log.Error("delete record failed", "vm_id", inst.ID, "stack", inst.Stack.String(), "error", err)
	}
}

// logHooks log one line per operator event: failed restores with their
// backoff, evictions with their reason, and failed destroys.
func (d *Daemon) logHooks() pool.Hooks {
	return pool.Hooks{
		Restored: func(inst vm.Instance, took time.Duration) {
			d.log.Debug("VM restored", "vm_id", inst.ID, "stack", inst.Stack.String(), "took", took)
		},
		RestoreFailed: func(id string, key vm.StackKey, err error, took, retryIn time.Duration) {
			// The pool reports a restore that its Close cancelled with
			// retryIn 0, and no retry follows it.
			if retryIn == 0 && errors.Is(err, context.Canceled) {
				d.log.Info("restore cancelled by shutdown", "vm_id", id, "stack", key.String(), "took", took)
				return
			}
			d.log.Warn("restore failed", "vm_id", id, "stack", key.String(), "error", err,
				"took", took, "retry_in", retryIn)
		},
		Evicted: func(inst vm.Instance, reason pool.EvictReason, cause error) {
			attrs := []any{"vm_id", inst.ID, "stack", inst.Stack.String(), "reason", string(reason)}
			if cause != nil {
				attrs = append(attrs, "error", cause)
			}
			// A VM that failed its check or probe is a fault the pool
			// recovered from. Age, unregister and close are routine.
			level := slog.LevelInfo
			if reason == pool.EvictUnhealthy || reason == pool.EvictProbe {
				level = slog.LevelWarn
			}
			d.log.Log(context.Background(), level, "VM evicted", attrs...)
		},
		Destroyed: func(inst vm.Instance, took time.Duration, err error) {
			if err != nil {
				d.log.Error("destroy failed", "vm_id", inst.ID, "stack", inst.Stack.String(), "error", err)
			}
		},
	}
}
