// Package sim is an in-memory vm.Provider. It runs no VMM: a restored VM is
// a record in a map, and latency, failures and hung calls are simulated from
// a seeded random source. The daemon uses it when no real VMM is
// configured, and tests use its ledger to check that no VM is leaked or
// destroyed twice.
package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
)

// Config sets the simulated latencies and fault rates. The zero value is a
// provider with no latency and no faults.
type Config struct {
	// RestoreLatency is how long a Restore takes. RestoreJitter adds a
	// uniformly random extra delay in [0, RestoreJitter).
	RestoreLatency time.Duration `yaml:"restore_latency"`
	RestoreJitter  time.Duration `yaml:"restore_jitter"`
	// DestroyLatency and DestroyJitter do the same for Destroy.
	DestroyLatency time.Duration `yaml:"destroy_latency"`
	DestroyJitter  time.Duration `yaml:"destroy_jitter"`
	// ProbeLatency is how long a Probe takes.
	ProbeLatency time.Duration `yaml:"probe_latency"`
	// RestoreFailureRate and DestroyFailureRate are the probabilities, from
	// 0 to 1, that a call fails. A failed Destroy leaves the VM running.
	RestoreFailureRate float64 `yaml:"restore_failure_rate"`
	DestroyFailureRate float64 `yaml:"destroy_failure_rate"`
	// HangRate is the probability that a Restore or Destroy hangs: it
	// blocks until its ctx is done and then fails with ctx's error.
	HangRate float64 `yaml:"hang_rate"`
	// Seed seeds the random source that draws jitter and faults, so that
	// a run can be repeated. The order of concurrent calls still varies.
	Seed uint64 `yaml:"seed"`
	// Clock measures the simulated latencies. Nil means the real clock.
	Clock clockwork.Clock `yaml:"-"`
}

// Validate returns an error naming the first invalid field, or nil.
func (c Config) Validate() error {
	durations := []struct {
		name  string
		value time.Duration
	}{
		{"restore_latency", c.RestoreLatency},
		{"restore_jitter", c.RestoreJitter},
		{"destroy_latency", c.DestroyLatency},
		{"destroy_jitter", c.DestroyJitter},
		{"probe_latency", c.ProbeLatency},
	}
	for _, d := range durations {
		if d.value < 0 {
			return fmt.Errorf("sim config: invalid %s %v: must not be negative", d.name, d.value)
		}
	}
	rates := []struct {
		name  string
		value float64
	}{
		{"restore_failure_rate", c.RestoreFailureRate},
		{"destroy_failure_rate", c.DestroyFailureRate},
		{"hang_rate", c.HangRate},
	}
	for _, r := range rates {
		if !(r.value >= 0 && r.value <= 1) {
			return fmt.Errorf("sim config: invalid %s %v: must be between 0 and 1", r.name, r.value)
		}
	}
	return nil
}

// ErrInjected is wrapped by every failure that the provider injects.
var ErrInjected = errors.New("sim: injected failure")

// simVM is one running simulated VM.
type simVM struct {
	inst vm.Instance
	dead atomic.Bool
}

// Provider is the simulated vm.Provider. Its methods are safe for concurrent
// use.
type Provider struct {
	cfg   Config
	clock clockwork.Clock

	// live maps a VM id to its *simVM, so that Check reads it without a
	// lock.
	live sync.Map
	// waiting counts calls blocked on their latency or hang.
	waiting atomic.Int64

	// mu guards rng and the ledger fields below. It is never held while a
	// call waits for its latency.
	mu             sync.Mutex
	rng            *rand.Rand
	restored       []string
	destroyed      []string
	doubleDestroys []string
	destroyedSet   map[string]bool
}

// New returns a provider with the given config.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Provider{
		cfg:          cfg,
		clock:        cfg.Clock,
		rng:          rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		destroyedSet: map[string]bool{},
	}
	if p.clock == nil {
		p.clock = clockwork.NewRealClock()
	}
	return p, nil
}

// Name returns "sim".
func (p *Provider) Name() string { return "sim" }

// Restore simulates a restore of snap after RestoreLatency. It fails with
// ErrInjected at RestoreFailureRate, and with ctx's error if ctx is done
// first or the call hangs.
func (p *Provider) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	if err := vm.ValidateID(id); err != nil {
		return vm.Instance{}, fmt.Errorf("sim: restore: %w", err)
	}
	if err := key.Validate(); err != nil {
		return vm.Instance{}, fmt.Errorf("sim: restore %s: %w", id, err)
	}
	hang, fail, delay := p.draw(p.cfg.RestoreFailureRate, p.cfg.RestoreLatency, p.cfg.RestoreJitter)
	if err := p.wait(ctx, hang, delay); err != nil {
		return vm.Instance{}, fmt.Errorf("sim: restore %s: %w", id, err)
	}
	if fail {
		return vm.Instance{}, fmt.Errorf("sim: restore %s: snapshot load: %w", id, ErrInjected)
	}

	inst := vm.Instance{ID: id, Stack: key, Snapshot: snap, RestoredAt: p.clock.Now()}
	if _, loaded := p.live.LoadOrStore(id, &simVM{inst: inst}); loaded {
		return vm.Instance{}, fmt.Errorf("sim: restore %s: a VM with this id is already running", id)
	}
	p.mu.Lock()
	p.restored = append(p.restored, id)
	p.mu.Unlock()
	return inst, nil
}

// Check returns an error if the VM is not running or was killed.
func (p *Provider) Check(inst vm.Instance) error {
	v, ok := p.live.Load(inst.ID)
	if !ok {
		return fmt.Errorf("sim: VM %s not found", inst.ID)
	}
	if v.(*simVM).dead.Load() {
		return fmt.Errorf("sim: VM %s: process exited", inst.ID)
	}
	return nil
}

// Probe waits ProbeLatency, or until ctx is done, and then returns what
// Check returns.
func (p *Provider) Probe(ctx context.Context, inst vm.Instance) error {
	if err := p.wait(ctx, false, p.cfg.ProbeLatency); err != nil {
		return fmt.Errorf("sim: probe %s: %w", inst.ID, err)
	}
	return p.Check(inst)
}

// Destroy stops the VM after DestroyLatency. It fails with ErrInjected at
// DestroyFailureRate, leaving the VM running, and with ctx's error if ctx
// is done first or the call hangs. Destroying a VM that is not running
// returns nil, but the ledger records a second destroy of the same id.
func (p *Provider) Destroy(ctx context.Context, inst vm.Instance) error {
	hang, fail, delay := p.draw(p.cfg.DestroyFailureRate, p.cfg.DestroyLatency, p.cfg.DestroyJitter)
	if err := p.wait(ctx, hang, delay); err != nil {
		return fmt.Errorf("sim: destroy %s: %w", inst.ID, err)
	}
	if fail {
		return fmt.Errorf("sim: destroy %s: %w", inst.ID, ErrInjected)
	}

	_, wasLive := p.live.LoadAndDelete(inst.ID)
	p.mu.Lock()
	defer p.mu.Unlock()
	if wasLive {
		p.destroyed = append(p.destroyed, inst.ID)
		p.destroyedSet[inst.ID] = true
	} else if p.destroyedSet[inst.ID] {
		p.doubleDestroys = append(p.doubleDestroys, inst.ID)
	}
	return nil
}

// Kill marks a running VM dead, as if its VMM process had exited, so that
// Check and Probe fail for it. It reports whether the VM was running.
func (p *Provider) Kill(id string) bool {
	v, ok := p.live.Load(id)
	if ok {
		v.(*simVM).dead.Store(true)
	}
	return ok
}

// Live returns the ids of the VMs running now, sorted.
func (p *Provider) Live() []string {
	var ids []string
	p.live.Range(func(k, _ any) bool {
		ids = append(ids, k.(string))
		return true
	})
	slices.Sort(ids)
	return ids
}

// Restored returns the id of every VM ever restored, in restore order.
func (p *Provider) Restored() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.restored)
}

// Destroyed returns the id of every VM destroyed, in destroy order.
func (p *Provider) Destroyed() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.destroyed)
}

// DoubleDestroys returns the ids of VMs destroyed again after a successful
// destroy, once per extra call.
func (p *Provider) DoubleDestroys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.doubleDestroys)
}

// Waiting returns the number of calls blocked on their latency or hung. A
// test on a fake clock waits for it before it advances the clock, because an
// advance before a call starts waiting does not end that call's wait.
func (p *Provider) Waiting() int {
	return int(p.waiting.Load())
}

// draw decides from the random source whether a call hangs or fails and
// how long it takes.
func (p *Provider) draw(failureRate float64, latency, jitter time.Duration) (hang, fail bool, delay time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	hang = p.cfg.HangRate > 0 && p.rng.Float64() < p.cfg.HangRate
	fail = failureRate > 0 && p.rng.Float64() < failureRate
	delay = latency
	if jitter > 0 {
		delay += time.Duration(p.rng.Int64N(int64(jitter)))
	}
	return hang, fail, delay
}

// wait blocks for delay, or forever if hang is set, and returns ctx's error
// if ctx is done first.
func (p *Provider) wait(ctx context.Context, hang bool, delay time.Duration) error {
	if hang {
		p.waiting.Add(1)
		defer p.waiting.Add(-1)
		<-ctx.Done()
		return ctx.Err()
	}
	if delay <= 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		default:
			return nil
		}
	}
	timer := p.clock.After(delay)
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer:
		return nil
	}
}
