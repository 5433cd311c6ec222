package pool

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollectorExportsStats(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	key := testKey("node")
	if err := f.pool.Register(key, testSnap, WithDepth(0, 2)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-dead", "vm-ok"} {
		if err := f.pool.Adopt(key, f.restoreDirect(key, id)); err != nil {
			t.Fatal(err)
		}
	}
	f.sim.Kill("vm-dead")
	ctx := context.Background()
	if _, err := f.pool.Acquire(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Acquire(ctx, key); err == nil {
		t.Fatal("Acquire of an empty bucket returned nil")
	}
	f.pool.background.wait(ctx, nil)
	// The miss starts filling the bucket up to MaxDepth 2.
	f.waitWarm(key, 2)

	c := NewCollector(f.pool)
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}

	const labels = `memory_mib="128",stack="node",vcpus="1",version="1.0"`
	want := `
# HELP warmpool_acquire_hits_total Acquires that returned a warm VM.
# TYPE warmpool_acquire_hits_total counter
warmpool_acquire_hits_total{` + labels + `} 1
# HELP warmpool_acquire_misses_total Acquires that found no warm VM.
# TYPE warmpool_acquire_misses_total counter
warmpool_acquire_misses_total{` + labels + `} 1
# HELP warmpool_evictions_total Warm VMs destroyed by the pool, by reason.
# TYPE warmpool_evictions_total counter
warmpool_evictions_total{memory_mib="128",reason="age",stack="node",vcpus="1",version="1.0"} 0
warmpool_evictions_total{memory_mib="128",reason="depth",stack="node",vcpus="1",version="1.0"} 0
warmpool_evictions_total{memory_mib="128",reason="probe",stack="node",vcpus="1",version="1.0"} 0
warmpool_evictions_total{memory_mib="128",reason="unhealthy",stack="node",vcpus="1",version="1.0"} 1
# HELP warmpool_warm_vms VMs warm and ready to hand out.
# TYPE warmpool_warm_vms gauge
warmpool_warm_vms{` + labels + `} 2
# HELP warmpool_destroys_total Destroys of pool-owned VMs, by result.
# TYPE warmpool_destroys_total counter
warmpool_destroys_total{result="failed"} 0
warmpool_destroys_total{result="ok"} 1
`
	err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"warmpool_acquire_hits_total", "warmpool_acquire_misses_total", "warmpool_evictions_total",
		"warmpool_warm_vms", "warmpool_destroys_total")
	if err != nil {
		t.Error(err)
	}

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("register collector: %v", err)
	}
	if n := testutil.CollectAndCount(c, "warmpool_max_depth"); n != 1 {
		t.Errorf("%d warmpool_max_depth series, want 1", n)
	}
}
