package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/vm"
)

// reattachTimeout bounds one Provider.Reattach call during recovery.
const reattachTimeout = 10 * time.Second

// recoveryAction is the step recovery takes for one recorded VM.
type recoveryAction string

const (
	// actionKeep leaves a handed-out VM running: it belongs to a tenant.
	actionKeep recoveryAction = "keep"
	// actionAdopt reattaches a warm VM and, if it is healthy, adds it to
	// its bucket.
	actionAdopt recoveryAction = "adopt"
	// actionDestroy destroys the VM and removes its record.
	actionDestroy recoveryAction = "destroy"
)

// decideRecovery chooses what to do with rec. Configured maps each stack of
// the config to its snapshot. It returns the action and, for a destroy, the
// reason.
func decideRecovery(rec state.Record, configured map[vm.StackKey]vm.Snapshot, canReattach bool) (recoveryAction, string) {
	switch rec.State {
	case state.HandedOut:
		return actionKeep, ""
	case state.Warm:
		snap, ok := configured[rec.Stack]
		switch {
		case !ok:
			return actionDestroy, "stack no longer configured"
		case snap != rec.Snapshot:
			return actionDestroy, "stack's snapshot changed"
		case !canReattach:
			return actionDestroy, "provider cannot reattach to VMs of a previous run"
		}
		return actionAdopt, ""
	case state.Restoring:
		return actionDestroy, "restore interrupted"
	case state.DestroyFailed:
		return actionDestroy, "earlier destroy failed"
	}
	return actionDestroy, fmt.Sprintf("unreadable record (state %q)", rec.State)
}

// recover examines every VM recorded by a previous run, before any stack is
// registered. Handed-out VMs are kept. Warm VMs of a configured stack that
// reattach and pass Check and Probe are returned, by stack, for adoption.
// Every other VM is destroyed and its record removed. A VM that fails to
// be destroyed stays recorded as destroy_failed, so the next start tries
// again. Recovery returns an error if the store cannot be read or ctx is
// cancelled. After a cancel, the records not yet handled stay as they are.
func (d *Daemon) recover(ctx context.Context, cfg *Config) (map[vm.StackKey][]vm.Instance, error) {
	recs, err := d.store.List()
	if err != nil {
		return nil, fmt.Errorf("recovery: %w", err)
	}
	configured := make(map[vm.StackKey]vm.Snapshot, len(cfg.Stacks))
	for _, s := range cfg.Stacks {
		configured[s.Key] = s.snapshot(d.provider.Name())
	}
	reattacher, canReattach := d.provider.(vm.Reattacher)

	var (
		mu    sync.Mutex
		adopt = make(map[vm.StackKey][]vm.Instance)
		wg    sync.WaitGroup
		slots = make(chan struct{}, cfg.Pool.RestoreConcurrency)
	)
	for _, rec := range recs {
		action, reason := decideRecovery(rec, configured, canReattach)
		if action == actionKeep {
			d.log.Info("recovery: kept handed-out VM", "vm_id", rec.ID, "stack", rec.Stack.String())
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if ctx.Err() != nil {
				return
			}
			if action == actionAdopt {
				err := d.checkRecovered(ctx, reattacher, rec.Instance)
				if err == nil {
					mu.Lock()
					adopt[rec.Stack] = append(adopt[rec.Stack], rec.Instance)
					mu.Unlock()
					return
				}
				if ctx.Err() != nil {
					return // the VM's health is unknown after a cancelled check
				}
				reason = "unhealthy: " + err.Error()
			}
			d.destroyRecorded(ctx, rec, reason)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("recovery interrupted, remaining records are left for the next start: %w", err)
	}
	return adopt, nil
}

// checkRecovered reattaches to a recorded warm VM and checks it.
func (d *Daemon) checkRecovered(ctx context.Context, r vm.Reattacher, inst vm.Instance) error {
	rctx, cancel := context.WithTimeout(ctx, reattachTimeout)
	defer cancel()
	if err := r.Reattach(rctx, inst); err != nil {
		return fmt.Errorf("reattach: %w", err)
	}
	if err := d.provider.Check(inst); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, d.config().Pool.ProbeTimeout)
	defer cancel()
	if err := d.provider.Probe(pctx, inst); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	return nil
}

// destroyRecorded destroys a VM recorded by a previous run and removes its
// record, or marks it destroy_failed.
func (d *Daemon) destroyRecorded(ctx context.Context, rec state.Record, reason string) {
	dctx, cancel := context.WithTimeout(ctx, d.config().Pool.DestroyTimeout)
	defer cancel()
	err := d.provider.Destroy(dctx, rec.Instance)
	if err != nil {
		d.log.Error("recovery: destroy failed", "vm_id", rec.ID, "stack", rec.Stack.String(),
			"reason", reason, "error", err)
	} else {
		d.log.Info("recovery: destroyed VM", "vm_id", rec.ID, "stack", rec.Stack.String(), "reason", reason)
	}
	d.recordDestroyed(rec.Instance, err)
}

// adopt adds a recovered warm VM to its bucket, or destroys it if the pool
// rejects it.
func (d *Daemon) adopt(inst vm.Instance) {
	if err := d.pool.Adopt(inst.Stack, inst); err != nil {
		d.destroyRecorded(context.Background(), state.Record{Instance: inst, State: state.Warm},
			"adopt failed: "+err.Error())
		return
	}
	d.log.Info("recovery: adopted warm VM", "vm_id", inst.ID, "stack", inst.Stack.String())
}
