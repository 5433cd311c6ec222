package pool

import (
	"errors"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
)

// Sentinel errors returned by the pool. Test for them with errors.Is: the
// pool wraps them with the stack key or the VM id involved.
var (
	// ErrEmpty is returned by Acquire when the stack's bucket has no warm
	// VM. The same call wakes the refiller.
	ErrEmpty = errors.New("pool: no warm VM for stack")
	// ErrUnknownStack is returned for a stack that is not registered.
	ErrUnknownStack = errors.New("pool: unknown stack")
	// ErrClosed is returned by every call made after Close has started.
	ErrClosed = errors.New("pool: closed")
	// ErrAlreadyRegistered is returned by Register for a key that already
	// has a bucket.
	ErrAlreadyRegistered = errors.New("pool: stack already registered")
)

// Config sets the pool's defaults and timings. Start from DefaultConfig and
// change what you need: New rejects a config that fails Validate.
type Config struct {
	// MinDepth and MaxDepth are the per-bucket defaults that WithDepth
	// overrides. The refiller starts restores when warm plus restoring VMs
	// fall below MinDepth, or when an Acquire finds the bucket empty, and
	// keeps restoring until they reach MaxDepth. MinDepth 0 thus means
	// that a bucket fills only on demand.
	MinDepth, MaxDepth int
	// RefillInterval is the period of the refiller's tick. Acquires and
	// restore completions also wake it.
	RefillInterval time.Duration
	// MaxAge is how long a VM may stay warm. Older VMs are destroyed and
	// replaced. It must be at least RefillInterval. Age is counted from
	// Instance.RestoredAt, which the pool sets to the time the VM turned
	// warm when the provider leaves it zero. A bucket therefore restores
	// at most MaxDepth VMs per MaxAge to replace aged ones.
	MaxAge time.Duration
	// RestoreConcurrency is the maximum number of restores in flight
	// across all buckets, from 1 to 1024. One bucket may use at most an
	// equal share of it among the registered buckets, rounded up.
	RestoreConcurrency int
	// RestoreTimeout is the deadline of one Provider.Restore call.
	RestoreTimeout time.Duration
	// DestroyTimeout is the deadline of one Provider.Destroy call.
	DestroyTimeout time.Duration
	// ProbeInterval is the period of the background Provider.Probe of every
	// warm VM. Zero turns probing off.
	ProbeInterval time.Duration
	// ProbeTimeout is the deadline of one Provider.Probe call.
	ProbeTimeout time.Duration
	// JoinBudget is how long Close waits for the refiller, its restores and
	// probes to stop before it goes on without them.
	JoinBudget time.Duration
	// BackoffInitial and BackoffMax bound the delay before a bucket retries
	// after a failed restore. The delay doubles with each consecutive
	// failure, is capped at BackoffMax and is jittered.
	BackoffInitial, BackoffMax time.Duration
	// Validator runs on every acquire. Nil means the provider's Check.
	Validator Validator
	// Clock is the source of time for every timer in the pool. Nil means
	// the real clock.
	Clock clockwork.Clock
	// Hooks are notified of the pool's lifecycle events.
	Hooks Hooks

	// afterPass, if set, runs on the refiller after each refill pass. Tests
	// use it to wait for a pass instead of sleeping.
	afterPass func()
}

// DefaultConfig returns a config suitable for VMs that restore in well under
// a second: two to four warm VMs per stack, four restores in flight.
func DefaultConfig() Config {
	return Config{
		MinDepth:           2,
		MaxDepth:           4,
		RefillInterval:     time.Second,
		MaxAge:             30 * time.Minute,
		RestoreConcurrency: 4,
		RestoreTimeout:     30 * time.Second,
		DestroyTimeout:     10 * time.Second,
		ProbeInterval:      0,
		ProbeTimeout:       2 * time.Second,
		JoinBudget:         200 * time.Millisecond,
		BackoffInitial:     100 * time.Millisecond,
		BackoffMax:         30 * time.Second,
	}
}

// maxRestoreConcurrency is the largest RestoreConcurrency that Validate
// accepts. Each restore in flight is a goroutine and a VMM process.
const maxRestoreConcurrency = 1024

// Validate returns an error naming the first invalid field, by its Go name,
// or nil.
func (c Config) Validate() error {
	if err := validateDepth(c.MinDepth, c.MaxDepth); err != nil {
		return fmt.Errorf("pool config: %w", err)
	}
	if c.RestoreConcurrency < 1 || c.RestoreConcurrency > maxRestoreConcurrency {
		return fmt.Errorf("pool config: invalid RestoreConcurrency %d: must be 1-%d",
			c.RestoreConcurrency, maxRestoreConcurrency)
	}
	durations := []struct {
		name  string
		value time.Duration
	}{
		{"RefillInterval", c.RefillInterval},
		{"MaxAge", c.MaxAge},
		{"RestoreTimeout", c.RestoreTimeout},
		{"DestroyTimeout", c.DestroyTimeout},
		{"ProbeTimeout", c.ProbeTimeout},
		{"JoinBudget", c.JoinBudget},
		{"BackoffInitial", c.BackoffInitial},
		{"BackoffMax", c.BackoffMax},
	}
	for _, d := range durations {
		if d.value <= 0 {
			return fmt.Errorf("pool config: invalid %s %v: must be positive", d.name, d.value)
		}
	}
	if c.ProbeInterval < 0 {
		return fmt.Errorf("pool config: invalid ProbeInterval %v: must be positive, or 0 to turn probing off", c.ProbeInterval)
	}
	if c.MaxAge < c.RefillInterval {
		return fmt.Errorf("pool config: invalid MaxAge %v: must be at least RefillInterval %v, "+
			"so that a VM stays warm for at least one refill pass", c.MaxAge, c.RefillInterval)
	}
	if c.BackoffInitial > c.BackoffMax {
		return fmt.Errorf("pool config: invalid BackoffInitial %v: must not exceed BackoffMax %v; "+
			"lower BackoffInitial or raise BackoffMax", c.BackoffInitial, c.BackoffMax)
	}
	return nil
}

func validateDepth(minDepth, maxDepth int) error {
	if minDepth < 0 {
		return fmt.Errorf("invalid MinDepth %d: must be at least 0", minDepth)
	}
	if maxDepth < 1 {
		return fmt.Errorf("invalid MaxDepth %d: must be at least 1", maxDepth)
	}
	if minDepth > maxDepth {
		return fmt.Errorf("invalid MinDepth %d: must not exceed MaxDepth %d; "+
			"lower MinDepth or raise MaxDepth", minDepth, maxDepth)
	}
	return nil
}

// Validator decides on every acquire whether a warm VM may be handed out.
// It runs on the caller's goroutine without a pool lock held, so it must be
// as cheap as Provider.Check.
type Validator interface {
	Validate(inst vm.Instance) error
}

// ValidatorFunc adapts a function to the Validator interface.
type ValidatorFunc func(inst vm.Instance) error

// Validate calls f(inst).
func (f ValidatorFunc) Validate(inst vm.Instance) error { return f(inst) }

// BucketOption changes one bucket's settings at Register.
type BucketOption func(*bucketOptions)

type bucketOptions struct {
	minDepth, maxDepth int
}

// WithDepth sets the bucket's MinDepth and MaxDepth in place of the pool's
// defaults. Register rejects values that Config.Validate would reject.
func WithDepth(minDepth, maxDepth int) BucketOption {
	return func(o *bucketOptions) {
		o.minDepth = minDepth
		o.maxDepth = maxDepth
	}
}

// EvictReason is the cause of an eviction, the pool destroying a VM it owns.
type EvictReason string

// Eviction reasons passed to Hooks.Evicted.
const (
	EvictUnhealthy  EvictReason = "unhealthy"  // the validator rejected it on acquire
	EvictAge        EvictReason = "age"        // it was warm for longer than MaxAge
	EvictProbe      EvictReason = "probe"      // a background probe failed
	EvictDepth      EvictReason = "depth"      // SetDepth lowered MaxDepth below the warm VMs
	EvictUnregister EvictReason = "unregister" // its stack was unregistered
	EvictClose      EvictReason = "close"      // the pool was closed
)

// Hooks are called from pool goroutines, never with a pool lock held. They
// must return quickly because restore workers, destroys and Close wait for
// them. Any of them may be nil. The pool does not recover a panic in a hook,
// so it crashes the program as it would anywhere else. A panic in a
// Provider method or in the Validator is recovered and counts as that
// call failing.
type Hooks struct {
	// RestoreStarted is called before Provider.Restore.
	RestoreStarted func(id string, key vm.StackKey, snap vm.Snapshot)
	// Restored is called once the VM is warm.
	Restored func(inst vm.Instance, took time.Duration)
	// RestoreFailed is called after a failed restore. retryIn is the
	// bucket's backoff before its next restore, or 0 for a restore that
	// Close cancelled. Every RestoreStarted is followed by one Restored or
	// RestoreFailed, or by Destroyed when the VM landed after its bucket
	// was removed.
	RestoreFailed func(id string, key vm.StackKey, err error, took time.Duration, retryIn time.Duration)
	// Evicted is called before a warm VM is destroyed.
	Evicted func(inst vm.Instance, reason EvictReason, cause error)
	// Destroyed is called after the pool destroyed a VM it owned, with the
	// error of Provider.Destroy.
	Destroyed func(inst vm.Instance, took time.Duration, err error)
}

// CombineHooks returns hooks that call each of hs in order.
func CombineHooks(hs ...Hooks) Hooks {
	var out Hooks
	for _, h := range hs {
		out.RestoreStarted = chain3(out.RestoreStarted, h.RestoreStarted)
		out.Restored = chain2(out.Restored, h.Restored)
		out.RestoreFailed = chain5(out.RestoreFailed, h.RestoreFailed)
		out.Evicted = chain3(out.Evicted, h.Evicted)
		out.Destroyed = chain3(out.Destroyed, h.Destroyed)
	}
	return out
}

func chain2[A, B any](first, second func(A, B)) func(A, B) {
	if first == nil {
		return second
	}
	if second == nil {
		return first
	}
	return func(a A, b B) {
		first(a, b)
		second(a, b)
	}
}

func chain3[A, B, C any](first, second func(A, B, C)) func(A, B, C) {
	if first == nil {
		return second
	}
	if second == nil {
		return first
	}
	return func(a A, b B, c C) {
		first(a, b, c)
		second(a, b, c)
	}
}

func chain5[A, B, C, D, E any](first, second func(A, B, C, D, E)) func(A, B, C, D, E) {
	if first == nil {
		return second
	}
	if second == nil {
		return first
	}
	return func(a A, b B, c C, d D, e E) {
		first(a, b, c, d, e)
		second(a, b, c, d, e)
	}
}
