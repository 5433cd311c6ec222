package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
)

// maxParallelDestroys bounds the Destroy calls that one Unregister or Close
// runs at the same time.
const maxParallelDestroys = 16

// Close stops the refiller, destroys every VM the pool owns and returns an
// error that names each VM it failed to destroy.
//
// Close first cancels restores and probes in flight and waits up to
// JoinBudget for the refiller and its workers to return. It then destroys,
// in parallel, the warm VMs, the VMs whose restore finished during that
// wait, and the VMs whose earlier destroy failed. Each destroy runs within
// DestroyTimeout and ctx. Close finally waits, within ctx, for destroys
// that evictions started in the background.
//
// A restore that ignores cancellation can outlive Close. When it returns a
// VM, the worker destroys that VM at once, and a failure shows only in
// Hooks.Destroyed and Stats.DestroyFailures. The same holds for a VM that
// an Acquire running concurrently with Close evicts after Close finished.
//
// Close may be called more than once: later calls return the first call's
// result once it has finished, and nil while it is still running.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closeStarted {
		done, err := p.closeDone, p.closeErr
		p.mu.Unlock()
		select {
		case <-done:
			return err
		default:
			return nil
		}
	}
	p.closeStarted = true
	p.closed.Store(true)
	reg := p.reg.Load()
	p.mu.Unlock()

	p.cancelLifetime()
	var errs []error
	if !p.workers.wait(ctx, p.clock.After(p.cfg.JoinBudget)) {
		errs = append(errs, fmt.Errorf("pool: close: refiller or restores still running after join budget %v; "+
			"VMs they restore later are destroyed when their restores return", p.cfg.JoinBudget))
	}

	var owned []vm.Instance
	for _, b := range reg.list {
		b.mu.Lock()
		owned = append(owned, instances(b.removeLocked(EvictClose))...)
		b.mu.Unlock()
	}
	p.mu.Lock()
	p.collected = true
	owned = append(owned, p.orphans...)
	retry := p.undestroyed
	p.orphans, p.undestroyed = nil, nil
	p.mu.Unlock()

	if err := p.destroyAll(ctx, owned, EvictClose, false); err != nil {
		errs = append(errs, err)
	}
	if err := p.destroyAll(ctx, retry, "", false); err != nil {
		errs = append(errs, err)
	}
	if !p.background.wait(ctx, nil) {
		errs = append(errs, fmt.Errorf("pool: close: background destroys still running: %w", ctx.Err()))
	}
	// Background destroys that failed before the wait above ended put their
	// VMs back on the undestroyed list, so try those once more.
	p.mu.Lock()
	retry = p.undestroyed
	p.undestroyed = nil
	p.mu.Unlock()
	if err := p.destroyAll(ctx, retry, "", false); err != nil {
		errs = append(errs, err)
	}

	err := errors.Join(errs...)
	p.mu.Lock()
	p.closeErr = err
	p.closeFinished = true
	close(p.closeDone)
	p.mu.Unlock()
	return err
}

// destroyAll destroys insts in parallel and returns an error naming each VM
// it failed to destroy. A non-empty reason fires Hooks.Evicted first. With
// keep set, failed VMs go on the undestroyed list for Close to try again.
func (p *Pool) destroyAll(ctx context.Context, insts []vm.Instance, reason EvictReason, keep bool) error {
	if len(insts) == 0 {
		return nil
	}
	errs := make([]error, len(insts))
	slots := make(chan struct{}, maxParallelDestroys)
	var wg sync.WaitGroup
	for i, inst := range insts {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if reason != "" {
				p.notifyEvicted(inst, reason, nil)
			}
			errs[i] = p.destroyVM(ctx, inst, keep)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// evictInBackground destroys inst, which the caller has removed from its
// bucket, on a new goroutine so that the caller does not wait on the VMM.
func (p *Pool) evictInBackground(inst vm.Instance, reason EvictReason, cause error) {
	p.background.add()
	go func() {
		defer p.background.done()
		p.notifyEvicted(inst, reason, cause)
		_ = p.destroyVM(context.Background(), inst, true)
	}()
}

// disposeLate handles a VM whose restore finished after its bucket was
// removed. Close destroys it if it has not yet collected its work, and
// otherwise this goroutine destroys it now.
func (p *Pool) disposeLate(inst vm.Instance, removedBy EvictReason) {
	if removedBy == EvictClose {
		p.mu.Lock()
		if !p.collected {
			p.orphans = append(p.orphans, inst)
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	p.notifyEvicted(inst, removedBy, nil)
	_ = p.destroyVM(context.Background(), inst, true)
}

func (p *Pool) notifyEvicted(inst vm.Instance, reason EvictReason, cause error) {
	if h := p.cfg.Hooks.Evicted; h != nil {
		h(inst, reason, cause)
	}
}

// destroyVM calls Provider.Destroy within DestroyTimeout and ctx, counts the
// result and fires Hooks.Destroyed. With keep set, a VM that it fails to
// destroy goes on the undestroyed list unless Close has finished.
func (p *Pool) destroyVM(ctx context.Context, inst vm.Instance, keep bool) error {
	dctx, cancel := clockwork.WithTimeout(ctx, p.clock, p.cfg.DestroyTimeout)
	start := p.clock.Now()
	err := p.provider.Destroy(dctx, inst)
	cancel()
	took := p.clock.Since(start)

	if err == nil {
		p.destroyed.Add(1)
	} else {
		p.destroyFailures.Add(1)
		err = fmt.Errorf("pool: destroy VM %s: %w", inst.ID, err)
		if keep {
			p.mu.Lock()
			if !p.closeFinished {
				p.undestroyed = append(p.undestroyed, inst)
			}
			p.mu.Unlock()
		}
	}
	if h := p.cfg.Hooks.Destroyed; h != nil {
		h(inst, took, err)
	}
	return err
}

// tracker counts running goroutines and lets Close wait for them. Unlike a
// sync.WaitGroup, goroutines may be added while another goroutine waits.
type tracker struct {
	mu      sync.Mutex // guards running and idle; nothing blocks while it is held
	running int
	idle    []chan struct{} // closed when running drops to zero
}

func (t *tracker) add() {
	t.mu.Lock()
	t.running++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.running--
	if t.running == 0 {
		for _, ch := range t.idle {
			close(ch)
		}
		t.idle = nil
	}
}

// wait blocks until no goroutine runs, ctx is done or timeout fires, and
// reports whether none runs. A nil timeout never fires.
func (t *tracker) wait(ctx context.Context, timeout <-chan time.Time) bool {
	t.mu.Lock()
	if t.running == 0 {
		t.mu.Unlock()
		return true
	}
	idle := make(chan struct{})
	t.idle = append(t.idle, idle)
	t.mu.Unlock()

	select {
	case <-idle:
		return true
	case <-ctx.Done():
	case <-timeout:
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running == 0
}
