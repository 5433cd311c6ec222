package observe

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/vm"
)

func benchmarkKeys(count int) []vm.StackKey {
	keys := make([]vm.StackKey, count)
	for i := range keys {
		keys[i] = vm.StackKey{Name: fmt.Sprintf("stack%d", i), Version: "1.0", VCPUs: 2, MemoryMiB: 512}
	}
	return keys
}

// BenchmarkObserveAcquire measures the cost that metrics add to each acquire
// request, from about 64 goroutines over 16 stacks.
func BenchmarkObserveAcquire(b *testing.B) {
	rec := New(prometheus.NewRegistry(), clockwork.NewFakeClock())
	keys := benchmarkKeys(16)
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			rec.ObserveAcquire(keys[i%len(keys)], OutcomeHit, 3*time.Microsecond)
			i++
		}
	})
}

// BenchmarkRestoredHook measures the Restored hook, which the pool calls once
// per restore.
func BenchmarkRestoredHook(b *testing.B) {
	rec := New(prometheus.NewRegistry(), clockwork.NewFakeClock())
	restored := rec.PoolHooks().Restored
	keys := benchmarkKeys(16)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		restored(vm.Instance{ID: "vm-1", Stack: keys[i%len(keys)]}, 40*time.Millisecond)
	}
}
