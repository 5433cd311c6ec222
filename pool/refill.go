package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
)

// runRefiller is the refiller: the one goroutine that decides which restores
// to start, which VMs to retire for age and when to probe. It never calls
// the provider itself, so a slow VMM cannot stall its decisions. It returns
// when Close cancels the pool's lifetime.
func (p *Pool) runRefiller(t refillTimers) {
	defer p.workers.done()
	defer t.stop()

	rotation := 0
	for {
		select {
		case <-p.lifetime.Done():
			return
		case <-p.wake:
		case <-t.tick.Chan():
		case <-t.deadline.Chan():
		case <-t.probeTick():
			p.startProbeRound()
			continue
		}
		next := p.refillPass(rotation)
		rotation++
		if p.cfg.afterPass != nil {
			p.cfg.afterPass()
		}
		if !next.IsZero() {
			t.deadline.Reset(max(p.clock.Until(next), time.Millisecond))
		}
	}
}

// refillTimers are the refiller's clocks. New creates them before it starts
// the refiller, so that a test that advances a fake clock right after New
// fires them.
type refillTimers struct {
	tick  clockwork.Ticker
	probe clockwork.Ticker // nil when probing is off
	// deadline fires at the next backoff end or age expiry, which may come
	// before the next tick.
	deadline clockwork.Timer
}

func newRefillTimers(clock clockwork.Clock, cfg Config) refillTimers {
	t := refillTimers{
		tick:     clock.NewTicker(cfg.RefillInterval),
		deadline: clock.NewTimer(cfg.RefillInterval),
	}
	if cfg.ProbeInterval > 0 {
		t.probe = clock.NewTicker(cfg.ProbeInterval)
	}
	return t
}

// probeTick returns the probe ticker's channel, or nil, which never
// receives, when probing is off.
func (t refillTimers) probeTick() <-chan time.Time {
	if t.probe == nil {
		return nil
	}
	return t.probe.Chan()
}

func (t refillTimers) stop() {
	t.tick.Stop()
	t.deadline.Stop()
	if t.probe != nil {
		t.probe.Stop()
	}
}

// refillPass retires VMs past MaxAge and starts the restores that the
// buckets need, within RestoreConcurrency and each bucket's share of it. It
// returns the earliest time at which a bucket's backoff ends or a VM
// expires, or zero if there is none.
func (p *Pool) refillPass(rotation int) time.Time {
	if p.lifetime.Err() != nil {
		return time.Time{}
	}
	now := p.clock.Now()
	buckets := p.reg.Load().list
	needs := make([]int, len(buckets))
	perBucket := restoreShare(p.cfg.RestoreConcurrency, len(buckets))
	var next time.Time
	for i, b := range buckets {
		plan := p.planBucket(b, now, &next)
		needs[i] = min(plan.need, max(0, perBucket-plan.restoring))
		for _, e := range plan.expired {
			p.evictInBackground(e.inst, EvictAge, nil)
		}
	}

	free := p.cfg.RestoreConcurrency - int(p.inflight.Load())
	for i, n := range shareRestores(needs, free, rotation) {
		if n == 0 {
			continue
		}
		b := buckets[i]
		b.mu.Lock()
		if b.removedBy != "" {
			b.mu.Unlock()
			continue
		}
		// restoring and inflight go up here, before the workers start, and
		// each worker takes its own share back in finishRestore.
		b.restoring += n
		round := b.failRound
		b.mu.Unlock()
		p.inflight.Add(int64(n))
		for range n {
			p.workers.add()
			go p.restore(b, round)
		}
	}
	return next
}

// bucketPlan is planBucket's decision for one bucket.
type bucketPlan struct {
	expired   []entry // removed from the bucket for age
	need      int     // restores the bucket needs
	restoring int     // restores already in flight
}

// planBucket removes the bucket's expired VMs and returns them with the
// number of restores the bucket needs. It moves next back to the bucket's
// next deadline if that comes first.
func (p *Pool) planBucket(b *bucket, now time.Time, next *time.Time) bucketPlan {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy != "" {
		return bucketPlan{}
	}

	restoredAt := make([]time.Time, b.warm.len())
	for i := range restoredAt {
		restoredAt[i] = b.warm.at(i).inst.RestoredAt
	}
	plan := bucketPlan{restoring: b.restoring}
	plan.expired = b.warm.removeAt(expiredIndices(restoredAt, now, p.cfg.MaxAge))
	// Counted under the lock, so that Stats never folds a removed bucket
	// before this count lands.
	b.counters.aged.Add(uint64(len(plan.expired)))
	for i := range b.warm.len() {
		earlier(next, b.warm.at(i).inst.RestoredAt.Add(p.cfg.MaxAge))
	}

	if now.Before(b.retryAt) {
		earlier(next, b.retryAt)
		return plan
	}
	plan.need, b.filling = planRefill(b.warm.len(), b.restoring, b.minDepth, b.maxDepth, b.filling)
	return plan
}

func earlier(next *time.Time, t time.Time) {
	if next.IsZero() || t.Before(*next) {
		*next = t
	}
}

// restore runs one Provider.Restore for b and makes the VM warm, or records
// the failure and the bucket's backoff. round is b.failRound when the
// restore was granted.
func (p *Pool) restore(b *bucket, round uint64) {
	defer p.workers.done()

	id := NewVMID(b.key)
	if h := p.cfg.Hooks.RestoreStarted; h != nil {
		h(id, b.key, b.snap)
	}
	start := p.clock.Now()
	ctx, cancel := clockwork.WithTimeout(p.lifetime, p.clock, p.cfg.RestoreTimeout)
	inst, err := p.callRestore(ctx, id, b)
	cancel()
	took := p.clock.Since(start)

	if err == nil {
		err = checkRestored(inst, id, b.key)
		if err != nil {
			p.destroyRejected(id, inst)
		}
	}
	if err != nil {
		p.restoreFailed(b, id, err, took, round)
		return
	}
	if inst.RestoredAt.IsZero() {
		inst.RestoredAt = p.clock.Now()
	}
	b.counters.restoresOK.Add(1)

	b.mu.Lock()
	b.restoring--
	removedBy := b.removedBy
	if removedBy == "" {
		b.failures = 0
		b.failRound++
		b.retryAt = time.Time{}
		b.addWarmLocked(entry{inst: inst})
	}
	b.mu.Unlock()
	p.finishRestore()

	if removedBy != "" {
		p.disposeLate(inst, removedBy)
		return
	}
	if h := p.cfg.Hooks.Restored; h != nil {
		h(inst, took)
	}
}

// callRestore calls Provider.Restore and turns a panic into an error.
func (p *Pool) callRestore(ctx context.Context, id string, b *bucket) (inst vm.Instance, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("provider panicked in restore: %v", r)
		}
	}()
	return p.provider.Restore(ctx, id, b.key, b.snap)
}

// checkRestored returns an error if the provider returned a VM other than
// the one requested. Accepting it could hand one VM to two callers when
// the provider returns the same id twice.
func checkRestored(inst vm.Instance, id string, key vm.StackKey) error {
	if inst.ID != id {
		return fmt.Errorf("provider returned VM id %q for a restore of %q", inst.ID, id)
	}
	if inst.Stack != key {
		return fmt.Errorf("provider returned VM %s with stack %s for a restore of %s", id, inst.Stack, key)
	}
	return nil
}

// destroyRejected destroys, in the background, the VM of a restore whose
// result checkRestored rejected: both the id requested and the one
// returned, because either may be running. A failed destroy goes on the
// undestroyed list for Close.
func (p *Pool) destroyRejected(id string, inst vm.Instance) {
	targets := []vm.Instance{{ID: id, Stack: inst.Stack, Snapshot: inst.Snapshot}}
	if inst.ID != id && inst.ID != "" {
		targets = append(targets, inst)
	}
	for _, t := range targets {
		p.background.add()
		go func() {
			defer p.background.done()
			_ = p.destroyVM(context.Background(), t, true)
		}()
	}
}

// restoreFailed records a failed restore and sets the bucket's backoff. A
// restore that Close cancelled is not a snapshot failure, so it is neither
// counted nor backed off, but the hook still receives it so that a caller that
// recorded RestoreStarted can drop its record.
//
// Restores granted together fail together when the snapshot is broken, so
// only the first failure of a round adds a backoff step. The others keep
// the backoff it set.
func (p *Pool) restoreFailed(b *bucket, id string, err error, took time.Duration, round uint64) {
	if p.lifetime.Err() != nil {
		b.mu.Lock()
		b.restoring--
		b.mu.Unlock()
		p.finishRestore()
		if h := p.cfg.Hooks.RestoreFailed; h != nil {
			h(id, b.key, err, took, 0)
		}
		return
	}
	b.counters.restoresFailed.Add(1)
	now := p.clock.Now()

	b.mu.Lock()
	b.restoring--
	if round == b.failRound {
		b.failures++
		b.failRound++
		retryIn := backoffDelay(b.failures, p.cfg.BackoffInitial, p.cfg.BackoffMax, rand.Float64())
		b.retryAt = now.Add(retryIn)
	}
	retryIn := max(0, b.retryAt.Sub(now))
	b.lastErr = err.Error()
	b.lastErrAt = now
	b.mu.Unlock()
	p.finishRestore()

	if h := p.cfg.Hooks.RestoreFailed; h != nil {
		h(id, b.key, err, took, retryIn)
	}
}

// finishRestore gives back the restore slot taken in refillPass and wakes
// the refiller so that it can use it.
func (p *Pool) finishRestore() {
	p.inflight.Add(-1)
	p.wakeRefiller()
}

// maxParallelProbes bounds the Probe calls of one probe round, so that a
// Probe that ignores its ctx holds one of them and the others go on.
const maxParallelProbes = 4

// startProbeRound starts a probe of every warm VM unless a round is still
// running. A round that waits on a Probe that ignores ProbeTimeout keeps
// the next round from starting, but the round's other probes still run.
func (p *Pool) startProbeRound() {
	if !p.probing.CompareAndSwap(false, true) {
		return
	}
	type target struct {
		b    *bucket
		inst vm.Instance
	}
	var targets []target
	for _, b := range p.reg.Load().list {
		b.mu.Lock()
		for i := range b.warm.len() {
			targets = append(targets, target{b, b.warm.at(i).inst})
		}
		b.mu.Unlock()
	}

	p.workers.add()
	go func() {
		defer p.workers.done()
		defer p.probing.Store(false)
		var wg sync.WaitGroup
		slots := make(chan struct{}, maxParallelProbes)
		for _, t := range targets {
			select {
			case slots <- struct{}{}:
			case <-p.lifetime.Done():
			}
			if p.lifetime.Err() != nil {
				break
			}
			wg.Go(func() {
				defer func() { <-slots }()
				p.probe(t.b, t.inst)
			})
		}
		wg.Wait()
	}()
}

// probe runs Provider.Probe on inst, which stays warm meanwhile and may be
// acquired. A failed VM is evicted only if it is still in the bucket, so a
// VM that was handed out during the probe is never destroyed. A Probe that
// panics counts as failed.
func (p *Pool) probe(b *bucket, inst vm.Instance) {
	ctx, cancel := clockwork.WithTimeout(p.lifetime, p.clock, p.cfg.ProbeTimeout)
	err := p.callProbe(ctx, inst)
	cancel()
	if err == nil || p.lifetime.Err() != nil {
		return
	}

	b.mu.Lock()
	var found bool
	if b.removedBy == "" {
		found = b.warm.removeID(inst.ID)
	}
	if found {
		b.counters.probed.Add(1)
	}
	b.mu.Unlock()
	if !found {
		return
	}
	p.evictInBackground(inst, EvictProbe, err)
	p.wakeRefiller()
}

func (p *Pool) callProbe(ctx context.Context, inst vm.Instance) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("provider panicked in probe: %v", r)
		}
	}()
	return p.provider.Probe(ctx, inst)
}
