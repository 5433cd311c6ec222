package firecracker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
)

// TestPoolWithFaults runs the pool over this provider and the emulator:
// some restores crash, warm VMs are killed or frozen while callers acquire
// concurrently, and after Close no process, file or goroutine is left and
// no VM went to two callers.
func TestPoolWithFaults(t *testing.T) {
	cfg := testConfig(t)
	cfg.HeartbeatTimeout = 400 * time.Millisecond
	provider := newTestProvider(t, cfg)
	snap := makeTemplate(t, provider, "pool", uniqueTAP(t))
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	// One restore in five crashes inside the snapshot load.
	provider.cfg.Env = append(provider.cfg.Env,
		fcemu.EnvCrashOn+"=PUT /snapshot/load", fcemu.EnvFaultProbability+"=0.2", fcemu.EnvLatency+"=1ms")

	var mu sync.Mutex
	var warmPIDs []int
	pcfg := pool.DefaultConfig()
	pcfg.MinDepth, pcfg.MaxDepth = 4, 6
	pcfg.RefillInterval = 20 * time.Millisecond
	pcfg.RestoreConcurrency = 4
	pcfg.RestoreTimeout = 5 * time.Second
	pcfg.DestroyTimeout = 5 * time.Second
	pcfg.ProbeInterval = 100 * time.Millisecond
	pcfg.ProbeTimeout = 200 * time.Millisecond
	pcfg.BackoffInitial, pcfg.BackoffMax = 5*time.Millisecond, 50*time.Millisecond
	pcfg.JoinBudget = time.Second
	pcfg.Hooks.Restored = func(inst vm.Instance, _ time.Duration) {
		mu.Lock()
		warmPIDs = append(warmPIDs, inst.PID)
		mu.Unlock()
	}
	p, err := pool.New(provider, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Register(testStack, snap); err != nil {
		t.Fatal(err)
	}
	waitWarm(t, p, 4)

	// Before any acquire every restored VM is warm: kill one and freeze
	// another, so the pool must find both and never hand them out.
	mu.Lock()
	killed, frozen := warmPIDs[0], warmPIDs[1]
	mu.Unlock()
	syscall.Kill(killed, syscall.SIGKILL)
	syscall.Kill(frozen, syscall.SIGSTOP)
	time.Sleep(cfg.HeartbeatTimeout + 100*time.Millisecond)

	// More faults while callers acquire: kill or freeze a random VM that
	// may be warm, handed out or already destroyed.
	stopFaults := make(chan struct{})
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		for i := 0; ; i++ {
			select {
			case <-stopFaults:
				return
			case <-time.After(30 * time.Millisecond):
			}
			mu.Lock()
			if len(warmPIDs) == 0 {
				mu.Unlock()
				continue
			}
			pid := warmPIDs[rand.IntN(len(warmPIDs))]
			mu.Unlock()
			// Signal only a live emulator of this test: the pid of a VM
			// destroyed earlier may belong to another process by now.
			if !isEmulator(pid) {
				continue
			}
			if i%2 == 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			} else {
				syscall.Kill(pid, syscall.SIGSTOP)
			}
		}
	}()

	var owners sync.Map
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				h, err := p.AcquireWait(ctx, testStack)
				cancel()
				if err != nil {
					t.Errorf("worker %d: acquire: %v", w, err)
					return
				}
				if h.PID == killed || h.PID == frozen {
					t.Errorf("worker %d got VM %s, whose process was killed or frozen", w, h.ID)
				}
				if prev, dup := owners.LoadOrStore(h.ID, w); dup {
					t.Errorf("VM %s handed to worker %d and worker %d", h.ID, prev, w)
				}
				if err := provider.Destroy(context.Background(), h.Instance); err != nil {
					t.Errorf("worker %d: destroy %s: %v", w, h.ID, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stopFaults)
	<-faultsDone

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
	stats := p.Stats()
	t.Logf("hits %d misses %d restores ok %d failed %d evictions unhealthy %d probe %d",
		stats.Hits, stats.Misses, stats.RestoresOK, stats.RestoresFailed, stats.UnhealthyEvictions, stats.ProbeEvictions)
	if stats.RestoresFailed == 0 {
		t.Error("no restore failed: the crash injection did not run")
	}
	if n := stats.UnhealthyEvictions + stats.ProbeEvictions; n < 2 {
		t.Errorf("%d VMs evicted as unhealthy, want at least the killed and the frozen one", n)
	}
	checkNothingLeft(t, provider)
	if got := provider.SnapshotRefs(snap.Path); got != 0 {
		t.Errorf("snapshot refs after close = %d, want 0", got)
	}
}

func waitWarm(t *testing.T, p *pool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s := p.Stats(); len(s.Buckets) == 1 && s.Buckets[0].Warm >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pool did not reach %d warm VMs: %+v", n, p.Stats())
}

// isEmulator reports whether pid runs the emulator built for these tests.
func isEmulator(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == emulatorBin
}
