// Package pool keeps warm VMs restored from snapshots, in one bucket per
// stack key, so that handing a VM to a tenant is a pop from a queue instead
// of a snapshot restore.
//
// Acquire pops the oldest warm VM, runs a cheap validator and returns it.
// It calls no provider method except Check, through the default validator,
// so it does not wait on the VMM. A single refiller goroutine decides when to
// restore, retire and probe VMs, and every VM state change goes through a
// vm.Provider. The package does not log: it reports through Hooks and
// Stats, and NewCollector exposes Stats to Prometheus.
package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
)

// Handle is a VM handed out by Acquire. It belongs to the caller, who
// destroys it with the provider when done.
type Handle struct {
	vm.Instance
	AcquiredAt time.Time
}

// registry is an immutable set of buckets. Register and Unregister replace
// it as a whole, so that Acquire reads it without a lock.
type registry struct {
	byKey map[vm.StackKey]*bucket
	list  []*bucket // sorted by key string
}

// Pool keeps warm VMs for every registered stack. Its methods are safe for
// concurrent use.
type Pool struct {
	provider  vm.Provider
	cfg       Config
	clock     clockwork.Clock
	validator Validator

	reg      atomic.Pointer[registry]
	closed   atomic.Bool
	inflight atomic.Int64 // restores started and not finished, across buckets
	probing  atomic.Bool  // a probe round is running

	destroyed       atomic.Uint64
	destroyFailures atomic.Uint64

	// wake has a buffer of one, so a wake-up sent while the refiller is busy
	// is kept and later ones are dropped.
	wake chan struct{}
	// lifetime is cancelled when Close starts. Restores and probes run
	// under it, and the refiller stops when it is done.
	lifetime       context.Context
	cancelLifetime context.CancelFunc

	workers    tracker // the refiller, restore workers and probe rounds
	background tracker // destroys that run off the caller's path

	// mu guards the fields below and serializes changes to reg. Never hold
	// it across a Provider call, a hook, or a channel send that can block.
	mu sync.Mutex
	// retired are unregistered buckets whose counters may still change,
	// because an Acquire or restore on them has not finished. Stats and
	// Unregister fold each settled one into retiredTotals.
	retired       []*bucket
	retiredTotals Stats
	undestroyed   []vm.Instance
	closeStarted  bool
	collected     bool          // Close has taken the orphans
	orphans       []vm.Instance // VMs whose restore finished while Close waited
	closeFinished bool
	closeDone     chan struct{}
	closeErr      error
}

// New validates cfg and returns a running pool with no buckets. The pool's
// refiller runs until Close.
func New(p vm.Provider, cfg Config) (*Pool, error) {
	if p == nil {
		return nil, errors.New("pool: provider is nil")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pl := &Pool{
		provider:  p,
		cfg:       cfg,
		clock:     cfg.Clock,
		validator: cfg.Validator,
		wake:      make(chan struct{}, 1),
		closeDone: make(chan struct{}),
	}
	if pl.clock == nil {
		pl.clock = clockwork.NewRealClock()
	}
	if pl.validator == nil {
		pl.validator = ValidatorFunc(p.Check)
	}
	pl.reg.Store(&registry{byKey: map[vm.StackKey]*bucket{}})
	pl.lifetime, pl.cancelLifetime = context.WithCancel(context.Background())
	timers := newRefillTimers(pl.clock, cfg)
	pl.workers.add()
	go pl.runRefiller(timers)
	return pl, nil
}

// Register adds a bucket for key that is refilled from snap. It returns an
// error and changes nothing if key or the depth is invalid, the key is
// already registered, or the pool is closed.
func (p *Pool) Register(key vm.StackKey, snap vm.Snapshot, opts ...BucketOption) error {
	if err := key.Validate(); err != nil {
		return fmt.Errorf("pool: register: %w", err)
	}
	o := bucketOptions{minDepth: p.cfg.MinDepth, maxDepth: p.cfg.MaxDepth}
	for i, opt := range opts {
		if opt == nil {
			return fmt.Errorf("pool: register %s: bucket option %d is nil", key, i)
		}
		opt(&o)
	}
	if err := validateDepth(o.minDepth, o.maxDepth); err != nil {
		return fmt.Errorf("pool: register %s: %w", key, err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closeStarted {
		return ErrClosed
	}
	old := p.reg.Load()
	if _, ok := old.byKey[key]; ok {
		return fmt.Errorf("%w: %s", ErrAlreadyRegistered, key)
	}
	b := &bucket{key: key, snap: snap, minDepth: o.minDepth, maxDepth: o.maxDepth}
	p.reg.Store(old.with(b))
	p.wakeRefiller()
	return nil
}

// Unregister removes the bucket of key and destroys its warm VMs in
// parallel, each within DestroyTimeout and ctx. Restores in flight for the
// bucket are destroyed when they finish. The error names each VM it failed
// to destroy, and Close tries those again.
func (p *Pool) Unregister(ctx context.Context, key vm.StackKey) error {
	p.mu.Lock()
	if p.closeStarted {
		p.mu.Unlock()
		return ErrClosed
	}
	old := p.reg.Load()
	b, ok := old.byKey[key]
	if !ok {
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}
	p.reg.Store(old.without(key))
	b.mu.Lock()
	entries := b.removeLocked(EvictUnregister)
	b.mu.Unlock()
	p.retired = append(p.retired, b)
	p.foldRetiredLocked()
	p.mu.Unlock()

	return p.destroyAll(ctx, instances(entries), EvictUnregister, true)
}

// Acquire pops the oldest warm VM of key, checks it with the validator and
// returns it. A VM that fails the check is evicted and destroyed in the
// background, and the next one is tried. Acquire calls no provider method
// except Check, through the default validator, so it does not wait on the
// VMM.
//
// When no warm VM is left, Acquire wakes the refiller and returns an error
// wrapping ErrEmpty. The bucket is then refilled up to its MaxDepth, even
// when its MinDepth is 0. Acquire returns ErrUnknownStack if key is not
// registered, ErrClosed after Close, and ctx's error if ctx is already done.
//
// A validator that panics counts as one that rejected the VM: Acquire
// recovers, evicts and destroys the VM, and returns an error that carries
// the panic value instead of trying the next VM.
func (p *Pool) Acquire(ctx context.Context, key vm.StackKey) (Handle, error) {
	return p.acquire(ctx, key, true)
}

// acquire is Acquire. countMiss false keeps an empty bucket out of Misses,
// for the retries of AcquireWait.
func (p *Pool) acquire(ctx context.Context, key vm.StackKey, countMiss bool) (Handle, error) {
	if err := ctx.Err(); err != nil {
		return Handle{}, err
	}
	if p.closed.Load() {
		return Handle{}, ErrClosed
	}
	b := p.reg.Load().byKey[key]
	if b == nil {
		return Handle{}, fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}
	for {
		e, ok, short, removedBy := b.popOldest()
		if removedBy == EvictClose {
			return Handle{}, ErrClosed
		}
		if removedBy != "" {
			return Handle{}, fmt.Errorf("%w: %s", ErrUnknownStack, key)
		}
		if short {
			p.wakeRefiller()
		}
		if !ok {
			if countMiss {
				b.counters.misses.Add(1)
			}
			b.counters.acquiring.Add(-1) // taken in popOldest
			return Handle{}, fmt.Errorf("%w %s", ErrEmpty, key)
		}
		if err := p.validate(e.inst); err != nil {
			b.counters.unhealthy.Add(1)
			b.counters.acquiring.Add(-1)
			p.evictInBackground(e.inst, EvictUnhealthy, err)
			if errors.Is(err, errValidatorPanic) {
				return Handle{}, fmt.Errorf("pool: acquire %s: %w", key, err)
			}
			continue
		}
		b.counters.hits.Add(1)
		b.counters.acquiring.Add(-1)
		return Handle{Instance: e.inst, AcquiredAt: p.clock.Now()}, nil
	}
}

// errValidatorPanic marks the error that validate makes of a panic.
var errValidatorPanic = errors.New("validator panicked")

// validate runs the validator on inst and turns a panic into an error
// wrapping errValidatorPanic, so that the VM that Acquire already took from
// its bucket is still evicted and destroyed.
func (p *Pool) validate(inst vm.Instance) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("VM %s: %w: %v", inst.ID, errValidatorPanic, r)
		}
	}()
	return p.validator.Validate(inst)
}

// AcquireWait is like Acquire, but when the bucket is empty it waits for a
// VM to turn warm until ctx is done. It then returns an error wrapping both
// ErrEmpty and ctx's error.
//
// One AcquireWait call adds at most one to Misses, when its first attempt
// finds the bucket empty, and one to Hits when it returns a VM, so a call
// that waited and succeeded counts both. Each VM that turns warm wakes one
// waiting call, the one that has waited longest.
func (p *Pool) AcquireWait(ctx context.Context, key vm.StackKey) (Handle, error) {
	for attempt := 0; ; attempt++ {
		b := p.reg.Load().byKey[key]
		if b == nil {
			return p.acquire(ctx, key, attempt == 0)
		}
		// The waiter is queued before the attempt, so that a VM that turns
		// warm between the two still wakes it.
		w := b.addWaiter()
		h, err := p.acquire(ctx, key, attempt == 0)
		if !errors.Is(err, ErrEmpty) {
			b.cancelWaiter(w)
			return h, err
		}
		select {
		case <-w:
		case <-ctx.Done():
			b.cancelWaiter(w)
			return Handle{}, fmt.Errorf("%w: %w", err, ctx.Err())
		}
	}
}

// Adopt adds inst, a VM that is already running, to the warm VMs of key.
// The pool then owns it. Crash recovery uses Adopt to take back VMs that a
// previous process restored. The bucket may then hold more than MaxDepth
// VMs until acquires bring it down. A zero inst.RestoredAt is set to now, so
// that MaxAge counts from the adoption.
func (p *Pool) Adopt(key vm.StackKey, inst vm.Instance) error {
	if err := vm.ValidateID(inst.ID); err != nil {
		return fmt.Errorf("pool: adopt: %w", err)
	}
	if inst.Stack != key {
		return fmt.Errorf("pool: adopt %s: VM stack %s does not match bucket %s", inst.ID, inst.Stack, key)
	}
	if p.closed.Load() {
		return ErrClosed
	}
	b := p.reg.Load().byKey[key]
	if b == nil {
		return fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy == EvictClose {
		return ErrClosed
	}
	if b.removedBy != "" {
		return fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}
	for i := range b.warm.len() {
		if b.warm.at(i).inst.ID == inst.ID {
			return fmt.Errorf("pool: adopt %s: VM is already warm in %s", inst.ID, key)
		}
	}
	if inst.RestoredAt.IsZero() {
		inst.RestoredAt = p.clock.Now()
	}
	b.addWarmLocked(entry{inst: inst})
	return nil
}

// SetDepth changes the MinDepth and MaxDepth of the registered bucket of key
// in place, keeping its warm VMs. If more VMs than the new maxDepth are warm,
// SetDepth evicts the oldest of them with EvictDepth and destroys them in the
// background. Restores already in flight still finish and turn warm. The
// refiller then fills the bucket to the new depth. SetDepth returns an
// error and changes nothing if the depth is invalid, key is not registered
// or the pool is closed.
func (p *Pool) SetDepth(key vm.StackKey, minDepth, maxDepth int) error {
	if err := validateDepth(minDepth, maxDepth); err != nil {
		return fmt.Errorf("pool: set depth of %s: %w", key, err)
	}
	if p.closed.Load() {
		return ErrClosed
	}
	b := p.reg.Load().byKey[key]
	if b == nil {
		return fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}

	b.mu.Lock()
	if b.removedBy == EvictClose {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.removedBy != "" {
		b.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}
	b.minDepth, b.maxDepth = minDepth, maxDepth
	var extra []entry
	for b.warm.len() > maxDepth {
		e, _ := b.warm.popOldest()
		extra = append(extra, e)
	}
	b.counters.depth.Add(uint64(len(extra)))
	b.mu.Unlock()

	for _, e := range extra {
		p.evictInBackground(e.inst, EvictDepth, nil)
	}
	p.wakeRefiller()
	return nil
}

// Snapshot returns the snapshot that the bucket of key restores from.
func (p *Pool) Snapshot(key vm.StackKey) (vm.Snapshot, error) {
	if p.closed.Load() {
		return vm.Snapshot{}, ErrClosed
	}
	b := p.reg.Load().byKey[key]
	if b == nil {
		return vm.Snapshot{}, fmt.Errorf("%w: %s", ErrUnknownStack, key)
	}
	return b.snap, nil
}

// NewVMID returns a fresh VM id that passes vm.ValidateID: the stack name
// with '.' replaced by '-', cut to 40 characters, then 16 random hex digits.
func NewVMID(key vm.StackKey) string {
	name := strings.ReplaceAll(key.Name, ".", "-")
	if len(name) > 40 {
		name = name[:40]
	}
	if name == "" {
		name = "vm"
	}
	return fmt.Sprintf("%s-%016x", name, rand.Uint64())
}

// wakeRefiller requests a refill pass without blocking.
func (p *Pool) wakeRefiller() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (r *registry) with(b *bucket) *registry {
	out := &registry{byKey: make(map[vm.StackKey]*bucket, len(r.byKey)+1)}
	for k, v := range r.byKey {
		out.byKey[k] = v
	}
	out.byKey[b.key] = b
	out.list = append(slices.Clone(r.list), b)
	slices.SortFunc(out.list, func(x, y *bucket) int {
		return strings.Compare(x.key.String(), y.key.String())
	})
	return out
}

func (r *registry) without(key vm.StackKey) *registry {
	out := &registry{byKey: make(map[vm.StackKey]*bucket, len(r.byKey))}
	for k, v := range r.byKey {
		if k != key {
			out.byKey[k] = v
			out.list = append(out.list, v)
		}
	}
	slices.SortFunc(out.list, func(x, y *bucket) int {
		return strings.Compare(x.key.String(), y.key.String())
	})
	return out
}

func instances(entries []entry) []vm.Instance {
	out := make([]vm.Instance, len(entries))
	for i, e := range entries {
		out[i] = e.inst
	}
	return out
}
