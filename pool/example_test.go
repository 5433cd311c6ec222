package pool_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

func ExampleNew() {
	provider, err := sim.New(sim.Config{RestoreLatency: 10 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	cfg := pool.DefaultConfig()
	cfg.MinDepth, cfg.MaxDepth = 1, 2
	p, err := pool.New(provider, cfg)
	if err != nil {
		panic(err)
	}
	defer p.Close(context.Background())

	key := vm.StackKey{Name: "python", Version: "3.13", VCPUs: 1, MemoryMiB: 256}
	snap := vm.Snapshot{ID: "python-3.13", Provider: provider.Name(), Path: "/var/lib/warmpool/python-3.13"}
	if err := p.Register(key, snap); err != nil {
		panic(err)
	}
	fmt.Println("registered", key)
	// Output: registered python@3.13/1cpu/256MiB
}

func ExamplePool_Acquire() {
	provider, err := sim.New(sim.Config{RestoreLatency: 100 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	p, err := pool.New(provider, pool.DefaultConfig())
	if err != nil {
		panic(err)
	}
	defer p.Close(context.Background())

	key := vm.StackKey{Name: "node", Version: "22", VCPUs: 2, MemoryMiB: 512}
	if err := p.Register(key, vm.Snapshot{ID: "node-22"}, pool.WithDepth(1, 1)); err != nil {
		panic(err)
	}

	// The first restore is still running, so the bucket is empty.
	ctx := context.Background()
	if _, err := p.Acquire(ctx, key); errors.Is(err, pool.ErrEmpty) {
		fmt.Println("empty:", err)
	}

	// AcquireWait waits for the refill instead.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h, err := p.AcquireWait(wctx, key)
	if err != nil {
		panic(err)
	}
	fmt.Println("acquired a VM of", h.Stack, "restored from", h.Snapshot.ID)

	// The VM now belongs to the caller, who destroys it when done.
	if err := provider.Destroy(ctx, h.Instance); err != nil {
		panic(err)
	}
	// Output:
	// empty: pool: no warm VM for stack node@22/2cpu/512MiB
	// acquired a VM of node@22/2cpu/512MiB restored from node-22
}
