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
// DestroyTimeout and ctx. Close then waits, within ctx, for destroys that
// evictions started in the background, and tries again each of those that
// failed, until none is left.
//
// When ctx is done, Close stops waiting and returns an error that wraps
// ctx's error and names each VM whose destroy had not finished. Those
// destroys go on in the background, and their results show only in
// Hooks.Destroyed and Stats.
//
// A restore that ignores cancellation can outlive Close. When it returns a
// VM, the worker destroys that VM at once, and a failure shows only in
// Hooks.Destroyed and Stats.DestroyFailures. The same holds for a VM that
// an Acquire running concurrently with Close evicts after Close finished.
//
// Close may be called more than once, also concurrently: later calls wait
// for the first call to finish and return its result, or return ctx's
// error if their own ctx is done first.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closeStarted {
		done := p.closeDone
		p.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("pool: close: another Close call still running: %w", ctx.Err())
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.closeErr
	}
	p.closeStarted = true
	p.closed.Store(true)
	reg := p.reg.Load()
	p.mu.Unlock()

	p.cancelLifetime()
	var errs []error
	if !p.workers.wait(ctx, p.clock.After(p.cfg.JoinBudget)) {
		errs = append(errs, p.joinError(ctx))
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
	errs = append(errs, p.retryBackgroundFailures(ctx)...)

	err := errors.Join(errs...)
	p.mu.Lock()
	p.closeErr = err
	close(p.closeDone)
	p.mu.Unlock()
	return err
}

// joinError describes the refiller or restores that Close's first wait left
// running.
func (p *Pool) joinError(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pool: close: refiller or restores still running when ctx ended: %w; "+
			"VMs they restore later are destroyed when their restores return", err)
	}
	return fmt.Errorf("pool: close: refiller or restores still running after join budget %v; "+
		"VMs they restore later are destroyed when their restores return", p.cfg.JoinBudget)
}

// retryBackgroundFailures waits for the background destroys and tries
// again each VM whose destroy failed, until no background destroy runs and
// none has failed since the last try. It then sets closeFinished in the
// same critical section as the last check. A destroy that fails later thus
// finds that Close no longer reads the undestroyed list.
func (p *Pool) retryBackgroundFailures(ctx context.Context) []error {
	var errs []error
	for {
		p.background.wait(ctx, nil)

		p.mu.Lock()
		retry := p.undestroyed
		p.undestroyed = nil
		// A background destroy puts a failed VM on the list before it
		// leaves the tracker, so no goroutine running under p.mu means that
		// every failure so far is in retry.
		running := p.background.count()
		stopped := ctx.Err() != nil
		p.closeFinished = stopped || (running == 0 && len(retry) == 0)
		finished := p.closeFinished
		p.mu.Unlock()

		if stopped {
			errs = append(errs, notDestroyed(retry, ctx.Err()))
			if running > 0 {
				errs = append(errs, fmt.Errorf("pool: close: %d background destroys still running: %w",
					running, ctx.Err()))
			}
			return errs
		}
		if err := p.destroyAll(ctx, retry, "", false); err != nil {
			errs = append(errs, err)
		}
		if finished {
			return errs
		}
	}
}

// notDestroyed returns an error naming each VM of insts as not destroyed
// because ctx ended with cause, or nil if insts is empty.
func notDestroyed(insts []vm.Instance, cause error) error {
	errs := make([]error, len(insts))
	for i, inst := range insts {
		errs[i] = fmt.Errorf("pool: destroy VM %s: not finished: %w", inst.ID, cause)
	}
	return errors.Join(errs...)
}

// destroyAll destroys insts in parallel and returns an error naming each VM
// it failed to destroy. A non-empty reason fires Hooks.Evicted first. With
// keep set, failed VMs go on the undestroyed list for Close to try again.
//
// When ctx is done, destroyAll returns without waiting for the destroys
// still running, and its error wraps ctx's error and names their VMs and
// those it had not started. The destroys it left keep running in the
// background tracker.
func (p *Pool) destroyAll(ctx context.Context, insts []vm.Instance, reason EvictReason, keep bool) error {
	if len(insts) == 0 {
		return nil
	}
	type result struct {
		i   int
		err error
	}
	// results has room for every destroy, so one that finishes after
	// destroyAll returned does not block.
	results := make(chan result, len(insts))
	slots := make(chan struct{}, maxParallelDestroys)
	started := 0
	for i, inst := range insts {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		started++
		p.background.add()
		go func() {
			defer p.background.done()
			defer func() { <-slots }()
			if reason != "" {
				p.notifyEvicted(inst, reason, nil)
			}
			results <- result{i, p.destroyVM(ctx, inst, keep)}
		}()
	}

	finished := make([]bool, len(insts))
	var errs []error
	for n := 0; n < started; n++ {
		select {
		case r := <-results:
			finished[r.i] = true
			errs = append(errs, r.err)
		case <-ctx.Done():
			n = started
		}
	}
	for drained := false; !drained; {
		select {
		case r := <-results:
			if !finished[r.i] {
				finished[r.i] = true
				errs = append(errs, r.err)
			}
		default:
			drained = true
		}
	}
	var unfinished []vm.Instance
	for i, done := range finished {
		if !done {
			unfinished = append(unfinished, insts[i])
		}
	}
	errs = append(errs, notDestroyed(unfinished, ctx.Err()))
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
	err := p.callDestroy(dctx, inst)
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

// callDestroy calls Provider.Destroy and turns a panic into an error.
func (p *Pool) callDestroy(ctx context.Context, inst vm.Instance) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("provider panicked in destroy: %v", r)
		}
	}()
	return p.provider.Destroy(ctx, inst)
}

// tracker counts running goroutines and lets Close wait for them. Unlike a
// sync.WaitGroup, goroutines may be added while another goroutine waits.
type tracker struct {
	mu      sync.Mutex // guards running and idle; nothing blocks while it is held
	running int
	idle    []chan struct{} // closed when running drops to zero
}

// count returns the number of running goroutines.
func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running
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
