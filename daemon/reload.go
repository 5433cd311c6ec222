package daemon

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// stackSpec is the snapshot and depth of a bucket's registration.
type stackSpec struct {
	snapshot           vm.Snapshot
	minDepth, maxDepth int
}

// stackSpecs returns the registration of each stack of cfg.
func stackSpecs(cfg *Config, providerKind string) map[vm.StackKey]stackSpec {
	specs := make(map[vm.StackKey]stackSpec, len(cfg.Stacks))
	for _, s := range cfg.Stacks {
		minDepth, maxDepth := s.Depth(cfg.Pool)
		specs[s.Key] = stackSpec{s.snapshot(providerKind), minDepth, maxDepth}
	}
	return specs
}

// stackDiff is the change between two sets of stacks.
// stackDiff lists the stacks a reload adds, removes, re-registers because
// their snapshot changed, and resizes in place because only their depth
// changed.
type stackDiff struct {
	added, removed, changed, resized []vm.StackKey
}

func diffStacks(old, new map[vm.StackKey]stackSpec) stackDiff {
	var diff stackDiff
	for key, spec := range new {
		oldSpec, ok := old[key]
		switch {
		case !ok:
			diff.added = append(diff.added, key)
		case oldSpec.snapshot != spec.snapshot:
			diff.changed = append(diff.changed, key)
		case oldSpec != spec:
			diff.resized = append(diff.resized, key)
		}
	}
	for key := range old {
		if _, ok := new[key]; !ok {
			diff.removed = append(diff.removed, key)
		}
	}
	for _, keys := range [][]vm.StackKey{diff.added, diff.removed, diff.changed, diff.resized} {
		sortKeys(keys)
	}
	return diff
}

func sortKeys(keys []vm.StackKey) {
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j].String() < keys[j-1].String(); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
}

// restartOnlyChanges names the sections of next that differ from cur and
// take effect only at the next start: the provider, the listen addresses,
// the state directory, and the pool section apart from its default depths
// and max_vms_per_stack, which reload applies.
func restartOnlyChanges(cur, next *Config) []string {
	var changed []string
	if !reflect.DeepEqual(cur.Provider, next.Provider) {
		changed = append(changed, "provider")
	}
	curPool, nextPool := cur.Pool, next.Pool
	curPool.MinDepth, curPool.MaxDepth, curPool.MaxVMsPerStack = 0, 0, 0
	nextPool.MinDepth, nextPool.MaxDepth, nextPool.MaxVMsPerStack = 0, 0, 0
	if curPool != nextPool {
		changed = append(changed, "pool")
	}
	if cur.Listen != next.Listen {
		changed = append(changed, "listen")
	}
	if cur.StateDir != next.StateDir {
		changed = append(changed, "state_dir")
	}
	return changed
}

// Reload reads the config file again and makes the pool's buckets match its
// stacks: stacks missing from the pool are registered, stacks removed from
// the file unregistered (their warm VMs destroyed), and stacks whose
// snapshot or depth differ unregistered and registered again. A config that fails to
// load, or names a snapshot that can never be restored, is rejected and the
// running one stays. Changes to sections that
// need a restart are logged and ignored. Stacks registered through the API
// are left alone unless the file names the same key, and then the file wins.
func (d *Daemon) Reload(ctx context.Context) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()

	next, err := LoadConfig(d.configPath)
	if err != nil {
		d.log.Error("reload rejected, keeping the running config", "error", err)
		return err
	}
	if err := d.checkStacks(next.Stacks); err != nil {
		err = fmt.Errorf("%s: %w", d.configPath, err)
		d.log.Error("reload rejected, keeping the running config", "error", err)
		return err
	}
	cur := d.config()
	if changed := restartOnlyChanges(cur, next); len(changed) > 0 {
		d.log.Warn("reload: changed sections need a restart to take effect",
			"sections", strings.Join(changed, ","))
		next.Provider, next.Listen, next.StateDir = cur.Provider, cur.Listen, cur.StateDir
		reloadable := next.Pool
		next.Pool = cur.Pool
		next.Pool.MinDepth, next.Pool.MaxDepth = reloadable.MinDepth, reloadable.MaxDepth
		next.Pool.MaxVMsPerStack = reloadable.MaxVMsPerStack
	}

	// The diff starts from the pool's buckets, not from the running config,
	// so a file stack that was unregistered or replaced through the API
	// is registered again as the file specifies.
	kind := d.provider.Name()
	nextSpecs := stackSpecs(next, kind)
	diff := diffStacks(d.registeredSpecs(stackSpecs(cur, kind), nextSpecs), nextSpecs)
	var errs []error
	for _, key := range diff.removed {
		errs = append(errs, d.unregister(ctx, key))
	}
	// A new snapshot needs new VMs, so the stack is drained and registered
	// again. A new depth alone keeps the warm VMs.
	for _, key := range diff.resized {
		spec := nextSpecs[key]
		if err := d.pool.SetDepth(key, spec.minDepth, spec.maxDepth); err != nil {
			errs = append(errs, err)
		}
	}
	for _, key := range diff.changed {
		if err := d.unregister(ctx, key); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, d.register(key, nextSpecs[key]))
	}
	for _, key := range diff.added {
		errs = append(errs, d.register(key, nextSpecs[key]))
	}

	d.mu.Lock()
	d.cfg = next
	d.mu.Unlock()

	err = errors.Join(errs...)
	d.log.Info("config reloaded", "added", len(diff.added), "removed", len(diff.removed),
		"changed", len(diff.changed), "resized", len(diff.resized), "failed", err != nil)
	return err
}

func (d *Daemon) register(key vm.StackKey, spec stackSpec) error {
	err := d.pool.Register(key, spec.snapshot, pool.WithDepth(spec.minDepth, spec.maxDepth))
	if err != nil {
		d.log.Error("reload: register stack failed", "stack", key.String(), "error", err)
		return fmt.Errorf("register %s: %w", key, err)
	}
	d.log.Info("reload: stack registered", "stack", key.String(), "snapshot", spec.snapshot.ID,
		"min_depth", spec.minDepth, "max_depth", spec.maxDepth)
	return nil
}

func (d *Daemon) unregister(ctx context.Context, key vm.StackKey) error {
	uctx, cancel := context.WithTimeout(ctx, d.config().ShutdownTimeout)
	defer cancel()
	err := d.pool.Unregister(uctx, key)
	if err != nil && !errors.Is(err, pool.ErrUnknownStack) {
		d.log.Error("reload: unregister stack failed", "stack", key.String(), "error", err)
		return fmt.Errorf("unregister %s: %w", key, err)
	}
	d.recorder.ForgetStack(key)
	d.log.Info("reload: stack unregistered", "stack", key.String())
	return nil
}

// registeredSpecs returns the registration of each bucket in the pool whose
// key is a stack of cur or next. Stacks that only the API registered are
// left out, so reload does not touch them.
func (d *Daemon) registeredSpecs(cur, next map[vm.StackKey]stackSpec) map[vm.StackKey]stackSpec {
	specs := make(map[vm.StackKey]stackSpec)
	for _, b := range d.pool.Stats().Buckets {
		_, inCur := cur[b.Key]
		_, inNext := next[b.Key]
		if inCur || inNext {
			specs[b.Key] = stackSpec{b.Snapshot, b.MinDepth, b.MaxDepth}
		}
	}
	return specs
}
