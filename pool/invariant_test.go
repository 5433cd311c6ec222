package pool

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

var invariantSeed = flag.Uint64("invariant.seed", 0, "random seed of TestPoolInvariant; 0 picks one per run")

// TestPoolInvariant runs the pool against a sim provider that injects
// failed, slow and hung restores and destroys, with concurrent acquirers,
// an Unregister and a Close in the middle. It then checks that every VM the
// provider restored ended in exactly one place: handed out once, destroyed,
// named in Close's error, reported as a failed destroy after Close
// returned, or kept by the test after a rejected Adopt.
//
// The seed fixes the faults and the test's choices, but not the order in
// which goroutines run, so a failing seed may need several runs to repeat.
func TestPoolInvariant(t *testing.T) {
	seeds := []uint64{*invariantSeed}
	if *invariantSeed == 0 {
		seeds = make([]uint64, 6)
		for i := range seeds {
			seeds[i] = rand.Uint64()
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			if !runInvariant(t, seed) {
				t.Logf("rerun with: go test -race -run TestPoolInvariant ./pool/ -invariant.seed=%d", seed)
			}
		})
	}
}

// invariantLedger records what the test saw happen to each VM.
type invariantLedger struct {
	mu           sync.Mutex // guards the maps below
	handedOut    map[string]int
	keptByTest   map[string]bool
	lateFailures map[string]bool
	// closeFailures are the VMs whose last destroy failed while Close ran.
	closeFailures map[string]bool
	closing       atomic.Bool
	closeReturned atomic.Bool
}

func runInvariant(t *testing.T, seed uint64) bool {
	rng := rand.New(rand.NewPCG(seed, 1))
	sp, err := sim.New(sim.Config{
		RestoreLatency:     time.Duration(rng.IntN(500)) * time.Microsecond,
		RestoreJitter:      2 * time.Millisecond,
		DestroyLatency:     time.Duration(rng.IntN(500)) * time.Microsecond,
		DestroyJitter:      time.Millisecond,
		ProbeLatency:       100 * time.Microsecond,
		RestoreFailureRate: 0.1 + 0.2*rng.Float64(),
		DestroyFailureRate: 0.05 + 0.2*rng.Float64(),
		HangRate:           0.02 + 0.05*rng.Float64(),
		Seed:               seed,
	})
	if err != nil {
		t.Fatal(err)
	}

	ledger := &invariantLedger{
		handedOut:     map[string]int{},
		keptByTest:    map[string]bool{},
		lateFailures:  map[string]bool{},
		closeFailures: map[string]bool{},
	}
	// Once Close starts, every other destroy fails, so that each run has
	// failures that Close must name.
	var destroys atomic.Int64
	fp := &faultyProvider{Provider: sp}
	fp.destroy = func(ctx context.Context, inst vm.Instance) error {
		if ledger.closing.Load() && destroys.Add(1)%2 == 0 {
			return errors.New("destroy failed during Close")
		}
		return sp.Destroy(ctx, inst)
	}
	cfg := DefaultConfig()
	cfg.RefillInterval = 2 * time.Millisecond
	cfg.MaxAge = 15 * time.Millisecond
	cfg.RestoreConcurrency = 1 + rng.IntN(4)
	cfg.RestoreTimeout = 10 * time.Millisecond
	cfg.DestroyTimeout = 10 * time.Millisecond
	cfg.ProbeInterval = 3 * time.Millisecond
	cfg.ProbeTimeout = 5 * time.Millisecond
	cfg.BackoffInitial = time.Millisecond
	cfg.BackoffMax = 5 * time.Millisecond
	cfg.Hooks.Destroyed = func(inst vm.Instance, _ time.Duration, err error) {
		ledger.mu.Lock()
		defer ledger.mu.Unlock()
		switch {
		case err != nil && ledger.closeReturned.Load():
			ledger.lateFailures[inst.ID] = true
		case err != nil && ledger.closing.Load():
			ledger.closeFailures[inst.ID] = true
		case err == nil:
			delete(ledger.closeFailures, inst.ID)
		}
	}
	p, err := New(fp, cfg)
	if err != nil {
		t.Fatal(err)
	}

	keys := []vm.StackKey{testKey("a"), testKey("b"), testKey("c"), testKey("d")}
	for _, k := range keys {
		minDepth := rng.IntN(3)
		if err := p.Register(k, testSnap, WithDepth(minDepth, minDepth+1+rng.IntN(3))); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	for worker := range 6 {
		workerRNG := rand.New(rand.NewPCG(seed, uint64(worker)+2))
		wg.Go(func() { acquireUntilClosed(t, p, sp, keys, workerRNG, ledger) })
	}

	time.Sleep(60 * time.Millisecond) // let the pool run under faults
	unregisterErr := p.Unregister(context.Background(), keys[0])
	time.Sleep(60 * time.Millisecond)
	adoptForClose(t, p, sp, keys[len(keys)-1], ledger)
	ledger.closing.Store(true)
	closeErr := p.Close(context.Background())
	ledger.closeReturned.Store(true)
	wg.Wait()
	p.WaitIdle()

	s := p.Stats()
	t.Logf("restored %d VMs: %d hits, %d misses, evictions %d unhealthy, %d age, %d probe; "+
		"%d restores failed, %d destroys failed, %d VMs left by failed destroys during Close",
		len(sp.Restored()), s.Hits, s.Misses, s.UnhealthyEvictions, s.AgeEvictions, s.ProbeEvictions,
		s.RestoresFailed, s.DestroyFailures, len(ledger.closeFailures))
	if unregisterErr != nil {
		t.Logf("Unregister: %v", unregisterErr)
	}
	checkInvariant(t, sp, ledger, closeErr)
	return !t.Failed()
}

// adoptForClose adopts a few VMs into the rarely acquired bucket of key,
// so that Close has warm VMs to destroy in every run.
func adoptForClose(t *testing.T, p *Pool, sp *sim.Provider, key vm.StackKey, ledger *invariantLedger) {
	for range 4 {
		// The sim hangs some restores until their ctx is done.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		inst, err := sp.Restore(ctx, NewVMID(key), key, testSnap)
		cancel()
		if err != nil {
			continue
		}
		if err := p.Adopt(key, inst); err != nil {
			t.Errorf("Adopt before Close: %v", err)
			ledger.mu.Lock()
			ledger.keptByTest[inst.ID] = true
			ledger.mu.Unlock()
		}
	}
}

// acquireUntilClosed acquires VMs, kills some warm ones and adopts new ones
// until the pool is closed.
func acquireUntilClosed(t *testing.T, p *Pool, sp *sim.Provider, keys []vm.StackKey, rng *rand.Rand, ledger *invariantLedger) {
	for {
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
		// The last key is acquired rarely, so its VMs live long enough to
		// be probed and to expire.
		key := keys[rng.IntN(len(keys)-1)]
		if rng.IntN(20) == 0 {
			key = keys[len(keys)-1]
		}
		switch n := rng.IntN(100); {
		case n < 5:
			if live := sp.Live(); len(live) > 0 {
				sp.Kill(live[rng.IntN(len(live))])
			}
		case n < 6:
			// The sim hangs some restores until their ctx is done.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			inst, err := sp.Restore(ctx, NewVMID(key), key, testSnap)
			cancel()
			if err != nil {
				continue
			}
			if err := p.Adopt(key, inst); err != nil {
				ledger.mu.Lock()
				ledger.keptByTest[inst.ID] = true
				ledger.mu.Unlock()
			}
			if errors.Is(err, ErrClosed) {
				return
			}
		default:
			h, err := p.Acquire(context.Background(), key)
			if errors.Is(err, ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			ledger.mu.Lock()
			ledger.handedOut[h.ID]++
			if ledger.handedOut[h.ID] > 1 {
				t.Errorf("VM %s handed out %d times", h.ID, ledger.handedOut[h.ID])
			}
			ledger.mu.Unlock()
		}
	}
}

var failedDestroyID = regexp.MustCompile(`destroy VM (\S+):`)

func checkInvariant(t *testing.T, sp *sim.Provider, ledger *invariantLedger, closeErr error) {
	t.Helper()
	namedByClose := map[string]bool{}
	if closeErr != nil {
		for _, m := range failedDestroyID.FindAllStringSubmatch(closeErr.Error(), -1) {
			namedByClose[m[1]] = true
		}
	}
	destroyed := map[string]bool{}
	for _, id := range sp.Destroyed() {
		destroyed[id] = true
	}
	live := map[string]bool{}
	for _, id := range sp.Live() {
		live[id] = true
	}

	for _, id := range sp.Restored() {
		places := []string{}
		if ledger.handedOut[id] > 0 {
			places = append(places, "handed out")
		}
		if destroyed[id] {
			places = append(places, "destroyed")
		}
		if namedByClose[id] {
			places = append(places, "named by Close")
		}
		if ledger.lateFailures[id] && !namedByClose[id] {
			places = append(places, "failed after Close")
		}
		if ledger.keptByTest[id] {
			places = append(places, "kept by test")
		}
		if len(places) != 1 {
			t.Errorf("VM %s is in %d places %v, want exactly one", id, len(places), places)
		}
		if destroyed[id] == live[id] {
			t.Errorf("VM %s: destroyed %v but live %v in the provider", id, destroyed[id], live[id])
		}
	}
	if twice := sp.DoubleDestroys(); len(twice) > 0 {
		t.Errorf("VMs destroyed twice: %v", twice)
	}
	// Exact per VM: each VM whose last destroy failed while Close ran is
	// named by Close, whatever else the run did.
	for id := range ledger.closeFailures {
		if live[id] && !namedByClose[id] {
			t.Errorf("VM %s: a destroy failed during Close, but Close's error does not name it", id)
		}
	}
	for id := range namedByClose {
		if !live[id] {
			t.Errorf("Close named %s as failed, but the provider has no such live VM", id)
		}
	}
}
