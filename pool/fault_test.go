package pool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

// faultyProvider is a sim provider whose Restore, Destroy or Probe a test
// replaces. A nil function leaves the sim's method in place.
type faultyProvider struct {
	*sim.Provider
	restore func(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error)
	destroy func(ctx context.Context, inst vm.Instance) error
	probe   func(ctx context.Context, inst vm.Instance) error
}

func (p *faultyProvider) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	if p.restore != nil {
		return p.restore(ctx, id, key, snap)
	}
	return p.Provider.Restore(ctx, id, key, snap)
}

func (p *faultyProvider) Destroy(ctx context.Context, inst vm.Instance) error {
	if p.destroy != nil {
		return p.destroy(ctx, inst)
	}
	return p.Provider.Destroy(ctx, inst)
}

func (p *faultyProvider) Probe(ctx context.Context, inst vm.Instance) error {
	if p.probe != nil {
		return p.probe(ctx, inst)
	}
	return p.Provider.Probe(ctx, inst)
}

// newFaultyFixture returns a fixture whose provider is fp wrapped around the
// fixture's sim provider.
func newFaultyFixture(t *testing.T, fp *faultyProvider, config func(*Config)) *fixture {
	t.Helper()
	return newFixture(t, fixtureOptions{
		provider: func(sp *sim.Provider) vm.Provider {
			fp.Provider = sp
			return fp
		},
		config: config,
	})
}

func TestValidatorPanicEvictsVM(t *testing.T) {
	var panicking atomic.Bool
	f := newFixture(t, fixtureOptions{config: func(c *Config) {
		c.Validator = ValidatorFunc(func(vm.Instance) error {
			if panicking.Load() {
				panic("validator bug")
			}
			return nil
		})
	}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 1)
	warmID := f.sim.Live()[0]

	panicking.Store(true)
	_, err := f.pool.Acquire(context.Background(), key)
	if err == nil || !strings.Contains(err.Error(), "validator bug") {
		t.Fatalf("Acquire = %v, want an error that carries the panic value", err)
	}
	f.waitUntil("panicked-on VM destroyed", func() bool { return slices.Contains(f.sim.Destroyed(), warmID) })
	if got := f.pool.Stats().UnhealthyEvictions; got != 1 {
		t.Errorf("UnhealthyEvictions = %d, want 1", got)
	}
}

func TestRestoreRejectsWrongInstance(t *testing.T) {
	tests := []struct {
		name   string
		change func(*vm.Instance)
	}{
		{"other id", func(inst *vm.Instance) { inst.ID = "vm-same" }},
		{"other stack", func(inst *vm.Instance) { inst.Stack = testKey("other") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fp := &faultyProvider{}
			fp.restore = func(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
				inst, err := fp.Provider.Restore(ctx, id, key, snap)
				tt.change(&inst)
				return inst, err
			}
			f := newFaultyFixture(t, fp, nil)
			key := testKey("node")
			if err := f.pool.Register(key, testSnap, WithDepth(2, 2)); err != nil {
				t.Fatal(err)
			}
			f.waitUntil("two rejected restores", func() bool { return len(f.events(&f.failed)) >= 2 })
			f.waitUntil("rejected VMs destroyed", func() bool {
				return len(f.sim.Live()) == 0 && f.pool.Stats().Destroyed >= 2
			})

			b := f.bucket(key)
			if b.Warm != 0 {
				t.Errorf("Warm = %d, want 0: no mismatched VM may turn warm", b.Warm)
			}
			if b.RestoresFailed < 2 {
				t.Errorf("RestoresFailed = %d, want at least 2", b.RestoresFailed)
			}
			if !strings.Contains(b.LastError, "provider returned") {
				t.Errorf("LastError = %q, want it to name the mismatch", b.LastError)
			}
			if _, err := f.pool.Acquire(context.Background(), key); !errors.Is(err, ErrEmpty) {
				t.Errorf("Acquire = %v, want ErrEmpty", err)
			}
		})
	}
}

func TestCloseNamesEvictionThatFailsDuringIt(t *testing.T) {
	var mu sync.Mutex // guards first and second
	var first, second string
	var firstAttempts atomic.Int64
	releaseSecond := make(chan struct{})
	secondBlocked := make(chan struct{})
	secondFailed := make(chan struct{})
	var secondFailedOnce sync.Once

	fp := &faultyProvider{}
	fp.destroy = func(ctx context.Context, inst vm.Instance) error {
		mu.Lock()
		isFirst, isSecond := inst.ID == first, inst.ID == second
		mu.Unlock()
		switch {
		case isFirst:
			// Close's retry of the first VM lets the acquire evict the
			// second one, and fails only once that eviction has failed.
			if firstAttempts.Add(1) == 2 {
				close(releaseSecond)
				select {
				case <-secondFailed:
				case <-time.After(eventTimeout):
				}
			}
			return errors.New("first VM: destroy failed")
		case isSecond:
			return errors.New("second VM: destroy failed")
		}
		return fp.Provider.Destroy(ctx, inst)
	}
	var armed atomic.Bool
	var seen atomic.Int64
	f := newFaultyFixture(t, fp, func(c *Config) {
		c.Validator = ValidatorFunc(func(inst vm.Instance) error {
			if !armed.Load() {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			switch seen.Add(1) {
			case 1:
				first = inst.ID
				return errors.New("first VM unhealthy")
			case 2:
				second = inst.ID
				close(secondBlocked)
				mu.Unlock()
				<-releaseSecond
				mu.Lock()
				return errors.New("second VM unhealthy")
			}
			return nil
		})
		c.Hooks = CombineHooks(c.Hooks, Hooks{Destroyed: func(inst vm.Instance, _ time.Duration, err error) {
			mu.Lock()
			isSecond := inst.ID == second
			mu.Unlock()
			if isSecond && err != nil {
				secondFailedOnce.Do(func() { close(secondFailed) })
			}
		}})
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 2)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 2)

	armed.Store(true)
	acquired := make(chan error, 1)
	go func() {
		_, err := f.pool.Acquire(context.Background(), key)
		acquired <- err
	}()
	<-secondBlocked
	closeErr := f.pool.Close(context.Background())
	<-acquired

	mu.Lock()
	defer mu.Unlock()
	if closeErr == nil {
		t.Fatal("Close = nil, want an error naming both VMs")
	}
	for _, id := range []string{first, second} {
		if !strings.Contains(closeErr.Error(), id) {
			t.Errorf("Close error %q does not name %s", closeErr, id)
		}
	}
}

func TestCloseReturnsWhenDestroyHangs(t *testing.T) {
	release := make(chan struct{})
	var entered atomic.Int64
	fp := &faultyProvider{}
	fp.destroy = func(context.Context, vm.Instance) error {
		entered.Add(1)
		<-release
		return nil
	}
	f := newFaultyFixture(t, fp, nil)
	t.Cleanup(func() {
		close(release)
		f.pool.WaitIdle()
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 2)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 2)
	live := f.sim.Live()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.pool.Close(ctx) }()
	f.waitUntil("both destroys to hang", func() bool { return entered.Load() == 2 })
	cancel()

	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Close = %v, want context.Canceled", err)
		}
		for _, id := range live {
			if err == nil || !strings.Contains(err.Error(), id) {
				t.Errorf("Close error %v does not name %s", err, id)
			}
		}
	case <-time.After(eventTimeout):
		t.Fatal("Close did not return after its ctx was cancelled")
	}
}

func TestHungBucketLeavesRestoreSlots(t *testing.T) {
	hung, healthy := testKey("hung"), testKey("healthy")
	fp := &faultyProvider{}
	fp.restore = func(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
		if key == hung {
			<-ctx.Done()
			return vm.Instance{}, ctx.Err()
		}
		return fp.Provider.Restore(ctx, id, key, snap)
	}
	f := newFaultyFixture(t, fp, func(c *Config) { c.RestoreConcurrency = 4 })
	if err := f.pool.Register(healthy, testSnap, WithDepth(4, 4)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(healthy, 4)
	if err := f.pool.Register(hung, testSnap, WithDepth(4, 4)); err != nil {
		t.Fatal(err)
	}
	f.pass()
	if got := f.bucket(hung).Restoring; got != 2 {
		t.Errorf("hung bucket holds %d restore slots, want 2 of 4 with two buckets", got)
	}

	for range 4 {
		if _, err := f.pool.Acquire(context.Background(), healthy); err != nil {
			t.Fatal(err)
		}
	}
	f.pass()
	f.waitUntil("healthy bucket to refill", func() bool { return f.bucket(healthy).Warm >= 1 })
}

func TestZeroRestoredAtIsStamped(t *testing.T) {
	fp := &faultyProvider{}
	fp.restore = func(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
		inst, err := fp.Provider.Restore(ctx, id, key, snap)
		inst.RestoredAt = time.Time{}
		return inst, err
	}
	f := newFaultyFixture(t, fp, nil)
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 2)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 2)
	if err := f.pool.Adopt(key, vm.Instance{ID: "vm-adopted", Stack: key}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.pass()
	}

	if got := f.pool.Stats().AgeEvictions; got != 0 {
		t.Errorf("AgeEvictions = %d, want 0 for VMs restored or adopted just now", got)
	}
	if got := len(f.events(&f.started)); got != 2 {
		t.Errorf("%d restores started, want 2", got)
	}
	if got := f.bucket(key).Warm; got != 3 {
		t.Errorf("Warm = %d, want 3", got)
	}
}

func TestStatsCountHitAcrossUnregister(t *testing.T) {
	inValidator := make(chan struct{})
	release := make(chan struct{})
	var armed atomic.Bool
	f := newFixture(t, fixtureOptions{config: func(c *Config) {
		c.Validator = ValidatorFunc(func(vm.Instance) error {
			if armed.CompareAndSwap(true, false) {
				close(inValidator)
				<-release
			}
			return nil
		})
	}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 1)

	armed.Store(true)
	acquired := make(chan error, 1)
	go func() {
		_, err := f.pool.Acquire(context.Background(), key)
		acquired <- err
	}()
	<-inValidator
	if err := f.pool.Unregister(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-acquired; err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if got := f.pool.Stats().Hits; got != 1 {
		t.Errorf("Hits = %d after a hit that finished after Unregister, want 1", got)
	}
}

func TestStatsMonotonicUnderUnregister(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	stable, churned := testKey("stable"), testKey("churned")
	for _, k := range []vm.StackKey{stable, churned} {
		if err := f.pool.Register(k, testSnap, WithDepth(0, 1)); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = f.pool.Acquire(context.Background(), stable)
			_, _ = f.pool.Acquire(context.Background(), churned)
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = f.pool.Unregister(context.Background(), churned)
			_ = f.pool.Register(churned, testSnap, WithDepth(0, 1))
		}
	})
	var prev Stats
	for range 100000 {
		s := f.pool.Stats()
		if s.Hits < prev.Hits || s.Misses < prev.Misses || s.RestoresOK < prev.RestoresOK {
			t.Errorf("totals went backwards: hits %d -> %d, misses %d -> %d, restores %d -> %d",
				prev.Hits, s.Hits, prev.Misses, s.Misses, prev.RestoresOK, s.RestoresOK)
			break
		}
		prev = s
	}
	close(stop)
	wg.Wait()
}

func TestAcquireWaitCountsOneMiss(t *testing.T) {
	f := newFixture(t, fixtureOptions{
		sim:    sim.Config{RestoreLatency: time.Second},
		config: func(c *Config) { c.RestoreConcurrency = 1 },
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}

	const waiters = 5
	errs := make(chan error, waiters)
	for range waiters {
		go func() {
			_, err := f.pool.AcquireWait(context.Background(), key)
			errs <- err
		}()
	}
	f.waitUntil("every waiter to miss once", func() bool { return f.bucket(key).Misses >= waiters })
	for range waiters {
		f.advance(1, time.Second)
		if err := <-errs; err != nil {
			t.Fatalf("AcquireWait: %v", err)
		}
	}

	b := f.bucket(key)
	if b.Misses != waiters {
		t.Errorf("Misses = %d, want %d: one per AcquireWait call", b.Misses, waiters)
	}
	if b.Hits != waiters {
		t.Errorf("Hits = %d, want %d", b.Hits, waiters)
	}
}

func TestConcurrentCloseWaitsForFirst(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	fp := &faultyProvider{}
	fp.destroy = func(context.Context, vm.Instance) error {
		notify(entered)
		<-release
		return errors.New("VMM not responding")
	}
	f := newFaultyFixture(t, fp, nil)
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 1)

	first := make(chan error, 1)
	go func() { first <- f.pool.Close(context.Background()) }()
	<-entered

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.pool.Close(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("second Close with a cancelled ctx = %v, want context.Canceled", err)
	}
	second := make(chan error, 1)
	go func() { second <- f.pool.Close(context.Background()) }()
	select {
	case err := <-second:
		t.Fatalf("second Close returned %v while the first was still destroying", err)
	case <-time.After(20 * time.Millisecond):
	}

	close(release)
	firstErr, secondErr := <-first, <-second
	if firstErr == nil {
		t.Fatal("first Close = nil, want the destroy error")
	}
	if secondErr == nil || secondErr.Error() != firstErr.Error() {
		t.Errorf("second Close = %v, want the first call's result %v", secondErr, firstErr)
	}
}

func TestMinDepthZeroFillsOnDemand(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	f.pass()
	if got := len(f.events(&f.started)); got != 0 {
		t.Fatalf("%d restores started before any acquire, want 0", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	if _, err := f.pool.AcquireWait(ctx, key); err != nil {
		t.Fatalf("AcquireWait: %v", err)
	}
	// The miss starts restores up to MaxDepth 2. AcquireWait may miss again
	// while it waits, which can top the bucket up once more after it took
	// its VM, so the restores settle at MaxDepth plus the one handed out at
	// most. With MinDepth 0 nothing more is restored until the next miss.
	settled := -1
	f.waitUntil("restores to settle", func() bool {
		b := f.bucket(key)
		if b.Restoring != 0 || b.Warm < 1 {
			return false
		}
		f.pass()
		started := len(f.events(&f.started))
		done := started == settled && f.bucket(key).Restoring == 0
		settled = started
		return done
	})
	if settled < 2 || settled > 3 {
		t.Errorf("%d restores started for one AcquireWait, want MaxDepth 2 or 3", settled)
	}
	for range 3 {
		f.pass()
	}
	if got := len(f.events(&f.started)); got != settled {
		t.Errorf("%d restores started after the bucket settled, want %d", got, settled)
	}
}

func TestBackoffOneStepPerRound(t *testing.T) {
	var mu sync.Mutex // guards retries
	var retries []time.Duration
	fp := &faultyProvider{}
	fp.restore = func(context.Context, string, vm.StackKey, vm.Snapshot) (vm.Instance, error) {
		return vm.Instance{}, errors.New("snapshot load: memory file truncated")
	}
	f := newFaultyFixture(t, fp, func(c *Config) {
		c.RestoreConcurrency = 4
		c.BackoffInitial = time.Second
		c.BackoffMax = time.Hour
		c.Hooks = CombineHooks(c.Hooks, Hooks{
			RestoreFailed: func(_ string, _ vm.StackKey, _ error, _, retryIn time.Duration) {
				mu.Lock()
				retries = append(retries, retryIn)
				mu.Unlock()
			},
		})
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(4, 4)); err != nil {
		t.Fatal(err)
	}
	f.waitUntil("four failed restores", func() bool { return len(f.events(&f.failed)) == 4 })

	mu.Lock()
	defer mu.Unlock()
	for i, r := range retries {
		if r > time.Second {
			t.Errorf("failure %d of the first round backs off %v, want at most BackoffInitial 1s", i, r)
		}
	}
}

func TestProviderPanicCountsAsFailure(t *testing.T) {
	fp := &faultyProvider{}
	fp.restore = func(context.Context, string, vm.StackKey, vm.Snapshot) (vm.Instance, error) {
		panic("restore bug")
	}
	fp.destroy = func(context.Context, vm.Instance) error { panic("destroy bug") }
	f := newFaultyFixture(t, fp, nil)
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitUntil("a failed restore", func() bool { return f.bucket(key).RestoresFailed >= 1 })
	if got := f.bucket(key).LastError; !strings.Contains(got, "restore bug") {
		t.Errorf("LastError = %q, want the panic value", got)
	}

	if err := f.pool.Adopt(key, f.restoreDirect(key, "vm-adopted")); err != nil {
		t.Fatal(err)
	}
	err := f.pool.Close(context.Background())
	if err == nil || !strings.Contains(err.Error(), "destroy bug") {
		t.Errorf("Close = %v, want the destroy panic named", err)
	}
	if got := f.pool.Stats().DestroyFailures; got < 1 {
		t.Errorf("DestroyFailures = %d, want at least 1", got)
	}
}

func TestProbeHangLeavesOtherProbes(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex // guards probed
	probed := map[string]bool{}
	var hung atomic.Bool
	fp := &faultyProvider{}
	fp.probe = func(_ context.Context, inst vm.Instance) error {
		mu.Lock()
		probed[inst.ID] = true
		mu.Unlock()
		if hung.CompareAndSwap(false, true) {
			<-release // ignores ctx, like a guest agent that never replies
		}
		return nil
	}
	f := newFaultyFixture(t, fp, func(c *Config) { c.ProbeInterval = time.Second })
	t.Cleanup(func() { close(release) })
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(3, 3)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 3)
	f.clock.Advance(time.Second)
	f.waitUntil("all three VMs probed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(probed) == 3
	})
}

func TestRegisterRejectsNilOption(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	err := f.pool.Register(testKey("node"), testSnap, nil)
	if err == nil || !strings.Contains(err.Error(), "option 0 is nil") {
		t.Errorf("Register = %v, want an error naming the nil option", err)
	}
	if n := len(f.pool.Stats().Buckets); n != 0 {
		t.Errorf("%d buckets after a rejected Register, want 0", n)
	}
}

func TestCloseWithCancelledCtxNamesCtx(t *testing.T) {
	stuck := stuckRestores{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	f := newFixture(t, fixtureOptions{provider: func(sp *sim.Provider) vm.Provider {
		stuck.Provider = sp
		return stuck
	}})
	t.Cleanup(func() {
		close(stuck.release)
		f.pool.WaitIdle()
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	<-stuck.entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := f.pool.Close(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want context.Canceled", err)
	}
	if err != nil && strings.Contains(err.Error(), "join budget") {
		t.Errorf("Close = %q, blames the join budget although ctx ended first", err)
	}
}

func TestSetDepthKeepsWarmVMs(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 4)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 4)
	before := f.sim.Live()

	if err := f.pool.SetDepth(key, 1, 2); err != nil {
		t.Fatalf("SetDepth: %v", err)
	}
	f.waitUntil("two depth evictions destroyed", func() bool { return len(f.sim.Live()) == 2 })
	b := f.bucket(key)
	if b.Warm != 2 || b.MinDepth != 1 || b.MaxDepth != 2 {
		t.Errorf("after lowering: Warm %d, depth %d-%d; want 2 warm, depth 1-2", b.Warm, b.MinDepth, b.MaxDepth)
	}
	if b.DepthEvictions != 2 {
		t.Errorf("DepthEvictions = %d, want 2", b.DepthEvictions)
	}
	if got := f.evictedFor(EvictDepth); len(got) != 2 {
		t.Errorf("depth evictions = %v, want two", got)
	}
	for _, id := range f.sim.Live() {
		if !slices.Contains(before, id) {
			t.Errorf("VM %s is new: SetDepth must keep the warm VMs", id)
		}
	}

	if err := f.pool.SetDepth(key, 3, 5); err != nil {
		t.Fatalf("SetDepth: %v", err)
	}
	f.waitWarm(key, 5)

	tests := []struct {
		name     string
		key      vm.StackKey
		min, max int
		want     string
	}{
		{"min above max", key, 3, 2, "invalid MinDepth 3"},
		{"zero max", key, 0, 0, "invalid MaxDepth 0"},
		{"unknown stack", testKey("other"), 1, 2, "unknown stack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.pool.SetDepth(tt.key, tt.min, tt.max)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("SetDepth = %v, want it to contain %q", err, tt.want)
			}
			if b := f.bucket(key); b.MinDepth != 3 || b.MaxDepth != 5 {
				t.Errorf("depth %d-%d after a rejected SetDepth, want 3-5", b.MinDepth, b.MaxDepth)
			}
		})
	}

	if err := f.pool.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.SetDepth(key, 1, 2); !errors.Is(err, ErrClosed) {
		t.Errorf("SetDepth after Close = %v, want ErrClosed", err)
	}
}
