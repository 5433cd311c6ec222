package pool

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

// eventTimeout bounds every wait for a pool event, so that a broken test
// fails instead of hanging. Events normally arrive within microseconds.
const eventTimeout = 10 * time.Second

func testKey(name string) vm.StackKey {
	return vm.StackKey{Name: name, Version: "1.0", VCPUs: 1, MemoryMiB: 128}
}

var testSnap = vm.Snapshot{ID: "snap-1", Provider: "sim", Path: "/snapshots/1"}

// fixture is a pool on a fake clock with a sim provider and a log of the
// events its hooks reported.
type fixture struct {
	t     *testing.T
	pool  *Pool
	sim   *sim.Provider
	clock *clockwork.FakeClock

	changed chan struct{} // receives after every hook call and refill pass
	passes  chan struct{} // receives after every refill pass

	mu          sync.Mutex // guards the event lists below
	started     []string
	restored    []string
	failed      []string
	evicted     map[EvictReason][]string
	destroyed   []string
	destroyErrs []error
}

type fixtureOptions struct {
	sim      sim.Config
	provider func(*sim.Provider) vm.Provider // wraps the sim provider
	config   func(*Config)
}

func newFixture(t *testing.T, opts fixtureOptions) *fixture {
	t.Helper()
	clock := clockwork.NewFakeClock()
	opts.sim.Clock = clock
	sp, err := sim.New(opts.sim)
	if err != nil {
		t.Fatalf("sim.New: %v", err)
	}
	f := &fixture{
		t:       t,
		sim:     sp,
		clock:   clock,
		changed: make(chan struct{}, 1),
		passes:  make(chan struct{}, 1),
		evicted: map[EvictReason][]string{},
	}

	// Every hook reads Stats, which takes the pool and bucket locks, so a
	// hook fired with a lock held deadlocks the test.
	var self atomic.Pointer[Pool]
	readStats := func() {
		if p := self.Load(); p != nil {
			p.Stats()
		}
	}
	cfg := DefaultConfig()
	cfg.Clock = clock
	cfg.Hooks = Hooks{
		RestoreStarted: func(id string, _ vm.StackKey, _ vm.Snapshot) {
			readStats()
			f.record(func() { f.started = append(f.started, id) })
		},
		Restored: func(inst vm.Instance, _ time.Duration) {
			readStats()
			f.record(func() { f.restored = append(f.restored, inst.ID) })
		},
		RestoreFailed: func(id string, _ vm.StackKey, _ error, _, _ time.Duration) {
			readStats()
			f.record(func() { f.failed = append(f.failed, id) })
		},
		Evicted: func(inst vm.Instance, reason EvictReason, _ error) {
			readStats()
			f.record(func() { f.evicted[reason] = append(f.evicted[reason], inst.ID) })
		},
		Destroyed: func(inst vm.Instance, _ time.Duration, err error) {
			readStats()
			f.record(func() {
				if err == nil {
					f.destroyed = append(f.destroyed, inst.ID)
				} else {
					f.destroyErrs = append(f.destroyErrs, err)
				}
			})
		},
	}
	cfg.afterPass = func() {
		notify(f.passes)
		notify(f.changed)
	}
	if opts.config != nil {
		opts.config(&cfg)
	}

	var provider vm.Provider = sp
	if opts.provider != nil {
		provider = opts.provider(sp)
	}
	p, err := New(provider, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	self.Store(p)
	f.pool = p
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Logf("Close at cleanup: %v", err)
		}
	})
	return f
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (f *fixture) record(change func()) {
	f.mu.Lock()
	change()
	f.mu.Unlock()
	notify(f.changed)
}

// waitUntil waits until cond holds, checking it after every pool event and
// every millisecond, because some state, such as the sim provider's waiting
// calls, changes without an event.
func (f *fixture) waitUntil(what string, cond func() bool) {
	f.t.Helper()
	timeout := time.After(eventTimeout)
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	for !cond() {
		select {
		case <-f.changed:
		case <-poll.C:
		case <-timeout:
			f.t.Fatalf("timed out waiting for %s; stats %+v", what, f.pool.Stats())
		}
	}
}

// pass waits for a refill pass that started after the call.
func (f *fixture) pass() {
	f.t.Helper()
	// The first pass to finish may have started before the call, but the
	// second one started after the first finished.
	for range 2 {
		f.pool.wakeRefiller()
		select {
		case <-f.passes:
		case <-time.After(eventTimeout):
			f.t.Fatal("timed out waiting for a refill pass")
		}
	}
}

// advance moves the fake clock by d once n sim calls wait on it.
func (f *fixture) advance(n int, d time.Duration) {
	f.t.Helper()
	f.waitUntil(fmt.Sprintf("%d sim calls waiting", n), func() bool { return f.sim.Waiting() >= n })
	f.clock.Advance(d)
}

func (f *fixture) bucket(key vm.StackKey) BucketStats {
	f.t.Helper()
	for _, b := range f.pool.Stats().Buckets {
		if b.Key == key {
			return b
		}
	}
	f.t.Fatalf("no bucket %s in stats", key)
	return BucketStats{}
}

func (f *fixture) waitWarm(key vm.StackKey, n int) {
	f.t.Helper()
	f.waitUntil(fmt.Sprintf("%d warm VMs in %s", n, key), func() bool {
		b := f.bucket(key)
		return b.Warm == n && b.Restoring == 0
	})
}

func (f *fixture) events(list *[]string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(*list)
}

func (f *fixture) evictedFor(reason EvictReason) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.evicted[reason])
}

// restoreDirect restores a VM with the sim provider, outside the pool, for
// tests that adopt it.
func (f *fixture) restoreDirect(key vm.StackKey, id string) vm.Instance {
	f.t.Helper()
	inst, err := f.sim.Restore(context.Background(), id, key, testSnap)
	if err != nil {
		f.t.Fatalf("restore %s: %v", id, err)
	}
	return inst
}
