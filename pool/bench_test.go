package pool_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/puddle/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

// The acquire benchmarks share one shape: 64 goroutines whatever
// GOMAXPROCS is, spread over 16 buckets of 8 warm VMs. Each goroutine
// acquires from its own bucket and gives the VM back at once, so a bucket
// never runs empty and every acquire is a hit.
const (
	benchGoroutines = 64
	benchBuckets    = 16
	benchDepth      = 8
)

func benchKey(i int) vm.StackKey {
	return vm.StackKey{Name: fmt.Sprintf("stack%d", i), Version: "1", VCPUs: 1, MemoryMiB: 128}
}

func setBenchParallelism(b *testing.B) {
	b.SetParallelism(max(1, benchGoroutines/runtime.GOMAXPROCS(0)))
}

// BenchmarkAcquireHit measures Pool.Acquire with the default validator (the
// sim provider's Check) and the counters that NewCollector exports.
func BenchmarkAcquireHit(b *testing.B) {
	sp, err := sim.New(sim.Config{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := pool.DefaultConfig()
	cfg.MinDepth = 0
	p, err := pool.New(sp, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	if err := prometheus.NewRegistry().Register(pool.NewCollector(p)); err != nil {
		b.Fatal(err)
	}

	ctx := context.Background()
	for i := range benchBuckets {
		key := benchKey(i)
		if err := p.Register(key, vm.Snapshot{ID: "bench"}, pool.WithDepth(0, benchDepth)); err != nil {
			b.Fatal(err)
		}
		for range benchDepth {
			inst, err := sp.Restore(ctx, pool.NewVMID(key), key, vm.Snapshot{ID: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Adopt(key, inst); err != nil {
				b.Fatal(err)
			}
		}
	}

	var next atomic.Int64
	setBenchParallelism(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		key := benchKey(int(next.Add(1)) % benchBuckets)
		for pb.Next() {
			h, err := p.Acquire(ctx, key)
			if err != nil {
				b.Error(err)
				return
			}
			p.PutBack(key, h)
		}
	})
}

// BenchmarkPuddleTryAcquire measures jackc/puddle's TryAcquire and Release
// in the same shape, one puddle pool per bucket.
func BenchmarkPuddleTryAcquire(b *testing.B) {
	ctx := context.Background()
	pools := make([]*puddle.Pool[vm.Instance], benchBuckets)
	for i := range pools {
		key := benchKey(i)
		pp, err := puddle.NewPool(&puddle.Config[vm.Instance]{
			Constructor: func(context.Context) (vm.Instance, error) {
				return vm.Instance{ID: pool.NewVMID(key), Stack: key}, nil
			},
			Destructor: func(vm.Instance) {},
			MaxSize:    benchDepth,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer pp.Close()
		for range benchDepth {
			if err := pp.CreateResource(ctx); err != nil {
				b.Fatal(err)
			}
		}
		pools[i] = pp
	}

	var next atomic.Int64
	setBenchParallelism(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		pp := pools[int(next.Add(1))%benchBuckets]
		for pb.Next() {
			res, err := pp.TryAcquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			res.Release()
		}
	})
}

// BenchmarkMutexSlice is the floor: a mutex and a slice per bucket, with no
// validator and no counters.
func BenchmarkMutexSlice(b *testing.B) {
	type bucket struct {
		mu   sync.Mutex
		warm []vm.Instance
		_    [64]byte
	}
	buckets := make([]bucket, benchBuckets)
	for i := range buckets {
		for range benchDepth {
			buckets[i].warm = append(buckets[i].warm, vm.Instance{ID: pool.NewVMID(benchKey(i))})
		}
	}

	var next atomic.Int64
	setBenchParallelism(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		bk := &buckets[int(next.Add(1))%benchBuckets]
		for pb.Next() {
			bk.mu.Lock()
			inst := bk.warm[len(bk.warm)-1]
			bk.warm = bk.warm[:len(bk.warm)-1]
			bk.mu.Unlock()

			bk.mu.Lock()
			bk.warm = append(bk.warm, inst)
			bk.mu.Unlock()
		}
	})
}
