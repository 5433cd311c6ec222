package observe

import (
	"context"
	"testing"
	"time"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

// simPool is a pool over the sim provider, for tests.
type simPool struct {
	*pool.Pool
	provider *sim.Provider
}

// newSimPool starts a pool over the sim provider with rec's hooks installed
// and closes it when the test ends. A nil validator means the provider's
// Check.
func newSimPool(t *testing.T, rec *Recorder, validator pool.Validator) simPool {
	t.Helper()
	provider, err := sim.New(sim.Config{RestoreLatency: 2 * time.Millisecond, Seed: 1})
	if err != nil {
		t.Fatalf("sim provider: %v", err)
	}
	cfg := pool.DefaultConfig()
	cfg.RefillInterval = 20 * time.Millisecond
	cfg.Validator = validator
	cfg.Hooks = rec.PoolHooks()
	p, err := pool.New(provider, cfg)
	if err != nil {
		t.Fatalf("new pool: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("close pool: %v", err)
		}
		if live := provider.Live(); len(live) != 0 {
			t.Errorf("VMs still running after close: %v", live)
		}
	})
	return simPool{Pool: p, provider: provider}
}

// acquireAndDestroy acquires a VM of key, which must be a hit, and destroys
// it as its caller would when done with it.
func (p simPool) acquireAndDestroy(t *testing.T, key vm.StackKey) vm.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	handle, err := p.Acquire(ctx, key)
	if err != nil {
		t.Fatalf("acquire %s: %v", key, err)
	}
	if err := p.provider.Destroy(ctx, handle.Instance); err != nil {
		t.Fatalf("destroy %s: %v", handle.ID, err)
	}
	return handle.Instance
}
