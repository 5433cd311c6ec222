package pool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

func TestRegisterRejectsBadInput(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 1)); err != nil {
		t.Fatalf("Register: %v", err)
	}

	tests := []struct {
		name string
		key  vm.StackKey
		opts []BucketOption
		want string
		is   error
	}{
		{"invalid key", vm.StackKey{Name: "bad name", Version: "1", VCPUs: 1, MemoryMiB: 128}, nil, "invalid name", nil},
		{"min above max", testKey("other"), []BucketOption{WithDepth(3, 1)}, "invalid MinDepth 3: must not exceed MaxDepth 1", nil},
		{"zero max", testKey("other"), []BucketOption{WithDepth(0, 0)}, "MaxDepth 0", nil},
		{"negative min", testKey("other"), []BucketOption{WithDepth(-1, 2)}, "MinDepth -1", nil},
		{"already registered", key, nil, key.String(), ErrAlreadyRegistered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.pool.Register(tt.key, testSnap, tt.opts...)
			if err == nil {
				t.Fatal("Register returned nil")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Register = %q, want it to contain %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Register = %v, want errors.Is %v", err, tt.is)
			}
			if n := len(f.pool.Stats().Buckets); n != 1 {
				t.Errorf("%d buckets after a rejected Register, want 1", n)
			}
		})
	}

	if err := f.pool.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.Register(testKey("late"), testSnap); !errors.Is(err, ErrClosed) {
		t.Errorf("Register after Close = %v, want ErrClosed", err)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	sp, err := sim.New(sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MinDepth, cfg.MaxDepth = 5, 2
	if _, err := New(sp, cfg); err == nil || !strings.Contains(err.Error(), "MinDepth 5: must not exceed MaxDepth 2") {
		t.Errorf("New = %v, want the MinDepth error", err)
	}
	if _, err := New(nil, DefaultConfig()); err == nil {
		t.Error("New accepted a nil provider")
	}
}

func TestRegisterFillsToMaxDepth(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 4)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 4)

	b := f.bucket(key)
	if b.RestoresOK != 4 {
		t.Errorf("RestoresOK = %d, want 4", b.RestoresOK)
	}
	if b.MinDepth != 2 || b.MaxDepth != 4 {
		t.Errorf("depth = %d..%d, want 2..4", b.MinDepth, b.MaxDepth)
	}
	if got, err := f.pool.Snapshot(key); err != nil || got != testSnap {
		t.Errorf("Snapshot = %+v, %v", got, err)
	}
}

func TestAcquireReturnsOldestFirst(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 3)); err != nil {
		t.Fatal(err)
	}
	ids := []string{"vm-a", "vm-b", "vm-c"}
	for _, id := range ids {
		if err := f.pool.Adopt(key, f.restoreDirect(key, id)); err != nil {
			t.Fatalf("Adopt %s: %v", id, err)
		}
	}

	for _, want := range ids {
		h, err := f.pool.Acquire(context.Background(), key)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if h.ID != want {
			t.Errorf("Acquire returned %s, want %s", h.ID, want)
		}
		if !h.AcquiredAt.Equal(f.clock.Now()) {
			t.Errorf("AcquiredAt = %v, want the clock's now %v", h.AcquiredAt, f.clock.Now())
		}
	}
	if got := f.bucket(key).Hits; got != 3 {
		t.Errorf("Hits = %d, want 3", got)
	}
}

func TestAcquireEmptyWakesRefiller(t *testing.T) {
	f := newFixture(t, fixtureOptions{sim: sim.Config{RestoreLatency: time.Second}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.advance(1, time.Second)
	f.waitWarm(key, 1)

	if _, err := f.pool.Acquire(context.Background(), key); err != nil {
		t.Fatalf("first Acquire: %v", err)
	}
	_, err := f.pool.Acquire(context.Background(), key)
	if !errors.Is(err, ErrEmpty) {
		t.Fatalf("second Acquire = %v, want ErrEmpty", err)
	}
	if !strings.Contains(err.Error(), key.String()) {
		t.Errorf("ErrEmpty message %q does not name the stack", err)
	}
	if got := f.bucket(key).Misses; got != 1 {
		t.Errorf("Misses = %d, want 1", got)
	}
	// The clock does not move, so only the acquires can have woken the
	// refiller for the next restore.
	f.waitUntil("refill restore started", func() bool { return f.bucket(key).Restoring == 1 })
}

func TestAcquireUnknownAndClosed(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	if _, err := f.pool.Acquire(ctx, testKey("nope")); !errors.Is(err, ErrUnknownStack) {
		t.Errorf("Acquire of unknown stack = %v, want ErrUnknownStack", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.pool.Acquire(cancelled, testKey("nope")); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with a cancelled ctx = %v, want context.Canceled", err)
	}

	key := testKey("node")
	if err := f.pool.Register(key, testSnap); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Acquire(ctx, key); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
	if _, err := f.pool.AcquireWait(ctx, key); !errors.Is(err, ErrClosed) {
		t.Errorf("AcquireWait after Close = %v, want ErrClosed", err)
	}
	if _, err := f.pool.Snapshot(key); !errors.Is(err, ErrClosed) {
		t.Errorf("Snapshot after Close = %v, want ErrClosed", err)
	}
}

func TestAcquireEvictsUnhealthy(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	dead := f.restoreDirect(key, "vm-dead")
	alive := f.restoreDirect(key, "vm-alive")
	for _, inst := range []vm.Instance{dead, alive} {
		if err := f.pool.Adopt(key, inst); err != nil {
			t.Fatal(err)
		}
	}
	f.sim.Kill(dead.ID)

	h, err := f.pool.Acquire(context.Background(), key)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if h.ID != alive.ID {
		t.Errorf("Acquire returned %s, want %s", h.ID, alive.ID)
	}
	f.waitUntil("dead VM destroyed", func() bool { return slices.Contains(f.events(&f.destroyed), dead.ID) })
	if got := f.evictedFor(EvictUnhealthy); !slices.Equal(got, []string{dead.ID}) {
		t.Errorf("unhealthy evictions = %v, want [%s]", got, dead.ID)
	}
	s := f.pool.Stats()
	if s.UnhealthyEvictions != 1 {
		t.Errorf("UnhealthyEvictions = %d, want 1", s.UnhealthyEvictions)
	}
	if s.Hits != 1 {
		t.Errorf("Hits = %d, want 1", s.Hits)
	}
}

func TestValidatorReplacesCheck(t *testing.T) {
	rejected := errors.New("rejected by test validator")
	f := newFixture(t, fixtureOptions{config: func(c *Config) {
		c.Validator = ValidatorFunc(func(inst vm.Instance) error {
			if inst.ID == "vm-bad" {
				return rejected
			}
			return nil
		})
	}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-bad", "vm-good"} {
		if err := f.pool.Adopt(key, f.restoreDirect(key, id)); err != nil {
			t.Fatal(err)
		}
	}
	h, err := f.pool.Acquire(context.Background(), key)
	if err != nil || h.ID != "vm-good" {
		t.Fatalf("Acquire = %s, %v; want vm-good", h.ID, err)
	}
	f.waitUntil("rejected VM destroyed", func() bool { return slices.Contains(f.events(&f.destroyed), "vm-bad") })
}

func TestRefillHysteresis(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 4)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 4)
	ctx := context.Background()

	// Down to 2: at min, so the refiller leaves the bucket alone.
	for range 2 {
		if _, err := f.pool.Acquire(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	f.pass()
	f.clock.Advance(DefaultConfig().RefillInterval)
	f.pass()
	if got := len(f.events(&f.started)); got != 4 {
		t.Errorf("%d restores started at min depth, want 4", got)
	}

	// Down to 1: below min, so the bucket fills back up to max.
	if _, err := f.pool.Acquire(ctx, key); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 4)
	if got := len(f.events(&f.started)); got != 7 {
		t.Errorf("%d restores started in total, want 7", got)
	}
}

func TestRestoreConcurrencyBound(t *testing.T) {
	f := newFixture(t, fixtureOptions{
		sim:    sim.Config{RestoreLatency: time.Second},
		config: func(c *Config) { c.RestoreConcurrency = 2 },
	})
	keys := []vm.StackKey{testKey("a"), testKey("b"), testKey("c")}
	for _, k := range keys {
		if err := f.pool.Register(k, testSnap, WithDepth(2, 2)); err != nil {
			t.Fatal(err)
		}
	}

	for round := 0; len(f.events(&f.restored)) < 6; round++ {
		if round > 10 {
			t.Fatalf("only %d restores after 10 rounds", len(f.events(&f.restored)))
		}
		f.pass()
		restoring := 0
		for _, b := range f.pool.Stats().Buckets {
			restoring += b.Restoring
		}
		if restoring > 2 {
			t.Fatalf("%d restores in flight, want at most 2", restoring)
		}
		if restoring == 0 {
			continue
		}
		done := len(f.events(&f.restored))
		f.advance(restoring, time.Second)
		f.waitUntil("restores to finish", func() bool { return len(f.events(&f.restored)) == done+restoring })
	}
	for _, k := range keys {
		if got := f.bucket(k).Warm; got != 2 {
			t.Errorf("bucket %s has %d warm, want 2", k, got)
		}
	}
}

func TestMaxAgeReplacesVM(t *testing.T) {
	f := newFixture(t, fixtureOptions{config: func(c *Config) { c.MaxAge = time.Minute }})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 1)
	first := f.events(&f.restored)[0]

	f.clock.Advance(time.Minute)
	f.waitUntil("old VM destroyed", func() bool { return slices.Contains(f.events(&f.destroyed), first) })
	f.waitUntil("replacement warm", func() bool { return len(f.events(&f.restored)) == 2 })
	f.waitWarm(key, 1)

	if got := f.evictedFor(EvictAge); !slices.Equal(got, []string{first}) {
		t.Errorf("age evictions = %v, want [%s]", got, first)
	}
	if got := f.pool.Stats().AgeEvictions; got != 1 {
		t.Errorf("AgeEvictions = %d, want 1", got)
	}
}

func TestProbeEvictsFailedVM(t *testing.T) {
	f := newFixture(t, fixtureOptions{config: func(c *Config) {
		c.ProbeInterval = 10 * time.Second
		c.Validator = ValidatorFunc(func(vm.Instance) error { return nil })
	}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-hung", "vm-ok"} {
		if err := f.pool.Adopt(key, f.restoreDirect(key, id)); err != nil {
			t.Fatal(err)
		}
	}
	f.sim.Kill("vm-hung")

	f.clock.Advance(10 * time.Second)
	f.waitUntil("probe eviction", func() bool { return slices.Contains(f.events(&f.destroyed), "vm-hung") })
	if got := f.evictedFor(EvictProbe); !slices.Equal(got, []string{"vm-hung"}) {
		t.Errorf("probe evictions = %v, want [vm-hung]", got)
	}
	if got := f.pool.Stats().ProbeEvictions; got != 1 {
		t.Errorf("ProbeEvictions = %d, want 1", got)
	}
	if got := f.bucket(key).Warm; got != 1 {
		t.Errorf("Warm = %d, want 1", got)
	}
}

func TestProbedVMMayBeAcquired(t *testing.T) {
	f := newFixture(t, fixtureOptions{
		sim: sim.Config{ProbeLatency: time.Second},
		config: func(c *Config) {
			c.ProbeInterval = 10 * time.Second
			c.Validator = ValidatorFunc(func(vm.Instance) error { return nil })
		},
	})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 1)); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.Adopt(key, f.restoreDirect(key, "vm-1")); err != nil {
		t.Fatal(err)
	}
	f.sim.Kill("vm-1")

	f.clock.Advance(10 * time.Second)
	f.waitUntil("probe to start", func() bool { return f.sim.Waiting() == 1 })
	h, err := f.pool.Acquire(context.Background(), key)
	if err != nil {
		t.Fatalf("Acquire during a probe: %v", err)
	}
	f.advance(1, time.Second)
	f.waitUntil("probe to finish", func() bool { return !f.pool.probing.Load() })

	if got := f.evictedFor(EvictProbe); len(got) != 0 {
		t.Errorf("probe evicted %v after it was handed out", got)
	}
	if slices.Contains(f.sim.Destroyed(), h.ID) {
		t.Errorf("VM %s was destroyed after it was handed out", h.ID)
	}
}

// brokenSnapshots fails every restore from a snapshot whose ID is "broken".
type brokenSnapshots struct {
	*sim.Provider
}

func (p brokenSnapshots) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	if snap.ID == "broken" {
		return vm.Instance{}, errors.New("snapshot load: memory file truncated")
	}
	return p.Provider.Restore(ctx, id, key, snap)
}

func TestBrokenSnapshotBacksOff(t *testing.T) {
	f := newFixture(t, fixtureOptions{
		provider: func(sp *sim.Provider) vm.Provider { return brokenSnapshots{sp} },
		config: func(c *Config) {
			c.BackoffInitial = time.Second
			c.BackoffMax = 4 * time.Second
			c.RestoreConcurrency = 1
		},
	})
	broken, good := testKey("broken"), testKey("good")
	if err := f.pool.Register(broken, vm.Snapshot{ID: "broken"}, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.Register(good, testSnap, WithDepth(3, 3)); err != nil {
		t.Fatal(err)
	}
	// The broken bucket shares the one restore slot but cannot starve the
	// good one.
	f.waitWarm(good, 3)
	f.waitUntil("a failed restore", func() bool { return len(f.events(&f.failed)) >= 1 })

	b := f.bucket(broken)
	if b.RetryAt.IsZero() {
		t.Error("RetryAt is zero while backing off")
	}
	if !strings.Contains(b.LastError, "memory file truncated") {
		t.Errorf("LastError = %q", b.LastError)
	}
	// Passes while backing off start nothing.
	failedBefore := len(f.events(&f.failed))
	for range 5 {
		f.pass()
	}
	if got := len(f.events(&f.failed)); got != failedBefore {
		t.Errorf("%d restores failed during backoff, want %d", got, failedBefore)
	}

	// Each backoff period, at most BackoffMax, lets exactly one more
	// restore through.
	for i := range 4 {
		f.clock.Advance(4 * time.Second)
		f.pass()
		f.waitUntil("retry to fail", func() bool { return len(f.events(&f.failed)) == failedBefore+i+1 })
		f.pass()
	}
	if got := len(f.events(&f.failed)); got != failedBefore+4 {
		t.Errorf("%d failed restores after 4 backoff periods, want %d", got, failedBefore+4)
	}
	if got := f.bucket(good).RestoresFailed; got != 0 {
		t.Errorf("good bucket has %d failed restores, want 0", got)
	}
}

func TestUnregisterDestroysWarmAndInFlight(t *testing.T) {
	f := newFixture(t, fixtureOptions{sim: sim.Config{RestoreLatency: time.Second}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(2, 2)); err != nil {
		t.Fatal(err)
	}
	f.advance(2, time.Second)
	f.waitWarm(key, 2)

	h, err := f.pool.Acquire(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	f.waitUntil("refill started", func() bool { return f.sim.Waiting() == 1 })

	if err := f.pool.Unregister(context.Background(), key); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if _, err := f.pool.Acquire(context.Background(), key); !errors.Is(err, ErrUnknownStack) {
		t.Errorf("Acquire after Unregister = %v, want ErrUnknownStack", err)
	}
	if err := f.pool.Unregister(context.Background(), key); !errors.Is(err, ErrUnknownStack) {
		t.Errorf("second Unregister = %v, want ErrUnknownStack", err)
	}

	f.advance(1, time.Second)
	f.waitUntil("in-flight VM destroyed", func() bool { return len(f.sim.Restored()) == 3 && len(f.sim.Live()) == 1 })
	if got := f.sim.Live(); !slices.Equal(got, []string{h.ID}) {
		t.Errorf("live VMs = %v, want only the acquired %s", got, h.ID)
	}
	if got := len(f.evictedFor(EvictUnregister)); got != 2 {
		t.Errorf("%d unregister evictions, want 2", got)
	}
	if got := f.pool.Stats().Hits; got != 1 {
		t.Errorf("Hits after Unregister = %d, want 1 kept from the removed bucket", got)
	}
}

func TestAdoptRejectsBadInput(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	inst := f.restoreDirect(key, "vm-1")
	if err := f.pool.Adopt(key, inst); err != nil {
		t.Fatal(err)
	}

	other := inst
	other.Stack = testKey("other")
	badID := inst
	badID.ID = "../etc"
	tests := []struct {
		name string
		key  vm.StackKey
		inst vm.Instance
		is   error
		want string
	}{
		{"invalid id", key, badID, vm.ErrInvalidID, "invalid VM id"},
		{"stack mismatch", key, other, nil, "does not match"},
		{"unknown stack", other.Stack, other, ErrUnknownStack, "unknown stack"},
		{"already warm", key, inst, nil, "already warm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.pool.Adopt(tt.key, tt.inst)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Adopt = %v, want an error containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Adopt = %v, want errors.Is %v", err, tt.is)
			}
			if got := f.bucket(key).Warm; got != 1 {
				t.Errorf("Warm = %d after a rejected Adopt, want 1", got)
			}
		})
	}
}

func TestAcquireWaitForRefill(t *testing.T) {
	f := newFixture(t, fixtureOptions{sim: sim.Config{RestoreLatency: time.Second}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}

	type result struct {
		h   Handle
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := f.pool.AcquireWait(context.Background(), key)
		done <- result{h, err}
	}()
	f.waitUntil("AcquireWait to miss", func() bool { return f.bucket(key).Misses >= 1 })
	f.advance(1, time.Second)
	r := <-done
	if r.err != nil {
		t.Fatalf("AcquireWait: %v", r.err)
	}
	if r.h.ID == "" {
		t.Error("AcquireWait returned a handle without an id")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err := f.pool.AcquireWait(ctx, key)
	if !errors.Is(err, ErrEmpty) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AcquireWait past its deadline = %v, want ErrEmpty and DeadlineExceeded", err)
	}
}

func TestCloseDestroysWarmAndIsIdempotent(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(3, 3)); err != nil {
		t.Fatal(err)
	}
	f.waitWarm(key, 3)

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = f.pool.Close(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Close call %d = %v", i, err)
		}
	}
	if got := f.sim.Live(); len(got) != 0 {
		t.Errorf("live VMs after Close: %v", got)
	}
	if got := f.sim.DoubleDestroys(); len(got) != 0 {
		t.Errorf("VMs destroyed twice: %v", got)
	}
	if got := len(f.evictedFor(EvictClose)); got != 3 {
		t.Errorf("%d close evictions, want 3", got)
	}
	if err := f.pool.Adopt(key, vm.Instance{ID: "vm-late", Stack: key}); !errors.Is(err, ErrClosed) {
		t.Errorf("Adopt after Close = %v, want ErrClosed", err)
	}
	if err := f.pool.Unregister(context.Background(), key); !errors.Is(err, ErrClosed) {
		t.Errorf("Unregister after Close = %v, want ErrClosed", err)
	}
}

func TestCloseNamesVMsItFailedToDestroy(t *testing.T) {
	f := newFixture(t, fixtureOptions{sim: sim.Config{DestroyFailureRate: 1}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 3)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-dead", "vm-taken", "vm-warm"} {
		if err := f.pool.Adopt(key, f.restoreDirect(key, id)); err != nil {
			t.Fatal(err)
		}
	}
	f.sim.Kill("vm-dead")
	if h, err := f.pool.Acquire(context.Background(), key); err != nil || h.ID != "vm-taken" {
		t.Fatalf("Acquire = %s, %v; want vm-taken after the dead VM is evicted", h.ID, err)
	}

	err := f.pool.Close(context.Background())
	if err == nil {
		t.Fatal("Close = nil, want an error naming the VMs it failed to destroy")
	}
	// The evicted VM's destroy failed in the background, and Close tried
	// it again.
	for _, id := range []string{"vm-dead", "vm-warm"} {
		if !strings.Contains(err.Error(), id) {
			t.Errorf("Close error %q does not name %s", err, id)
		}
	}
	if !errors.Is(err, sim.ErrInjected) {
		t.Errorf("Close error %v does not wrap the provider's error", err)
	}
	if again := f.pool.Close(context.Background()); again == nil || again.Error() != err.Error() {
		t.Errorf("second Close = %v, want the first result", again)
	}
	if got := f.pool.Stats().DestroyFailures; got < 3 {
		t.Errorf("DestroyFailures = %d, want at least 3", got)
	}
}

// stuckRestores blocks every Restore until release is closed, ignoring ctx,
// like a VMM that stopped responding.
type stuckRestores struct {
	*sim.Provider
	release chan struct{}
	entered chan struct{}
}

func (p stuckRestores) Restore(_ context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	notify(p.entered)
	<-p.release
	return p.Provider.Restore(context.Background(), id, key, snap)
}

func TestCloseWithinJoinBudgetDespiteHungRestore(t *testing.T) {
	stuck := stuckRestores{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	f := newFixture(t, fixtureOptions{provider: func(sp *sim.Provider) vm.Provider {
		stuck.Provider = sp
		return stuck
	}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	<-stuck.entered

	done := make(chan error, 1)
	go func() { done <- f.pool.Close(context.Background()) }()
	// Close waits JoinBudget on the fake clock: move it until Close returns.
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(time.Millisecond):
			f.clock.Advance(50 * time.Millisecond)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "join budget") {
		t.Errorf("Close = %v, want an error about the join budget", err)
	}
	if f.clock.Since(time.Time{}) < 0 {
		t.Fatal("fake clock went backwards")
	}

	// The restore finishes after Close returned: its VM must not leak.
	close(stuck.release)
	f.waitUntil("late VM destroyed", func() bool {
		return len(f.sim.Restored()) == 1 && len(f.sim.Live()) == 0
	})
	f.pool.workers.wait(context.Background(), nil)
	if got := f.sim.Destroyed(); len(got) != 1 {
		t.Errorf("destroyed = %v, want the late VM", got)
	}
}

func TestNewVMIDIsValidAndFresh(t *testing.T) {
	keys := []vm.StackKey{
		testKey("node"),
		{Name: "py.thon_3", Version: "1", VCPUs: 1, MemoryMiB: 128},
		{Name: strings.Repeat("x", 64), Version: "1", VCPUs: 1, MemoryMiB: 128},
	}
	seen := map[string]bool{}
	for _, k := range keys {
		for range 100 {
			id := NewVMID(k)
			if err := vm.ValidateID(id); err != nil {
				t.Fatalf("NewVMID(%s) = %q: %v", k, id, err)
			}
			if seen[id] {
				t.Fatalf("NewVMID returned %q twice", id)
			}
			seen[id] = true
		}
	}
}

func TestCloseReportsCancelledRestore(t *testing.T) {
	f := newFixture(t, fixtureOptions{sim: sim.Config{RestoreLatency: time.Hour}})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(1, 1)); err != nil {
		t.Fatal(err)
	}
	f.waitUntil("restore started", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.started) == 1
	})

	if err := f.pool.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.mu.Lock()
	started, failed := slices.Clone(f.started), slices.Clone(f.failed)
	f.mu.Unlock()
	if !slices.Equal(failed, started) {
		t.Errorf("RestoreFailed ids = %v, want the cancelled restore %v", failed, started)
	}
	if got := f.pool.Stats().RestoresFailed; got != 0 {
		t.Errorf("RestoresFailed = %d, want 0: a cancelled restore is not a failure", got)
	}
}
