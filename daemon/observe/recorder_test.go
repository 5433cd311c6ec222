package observe

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

var (
	pythonKey = vm.StackKey{Name: "python", Version: "3.12", VCPUs: 2, MemoryMiB: 512}
	nodeKey   = vm.StackKey{Name: "node", Version: "22", VCPUs: 1, MemoryMiB: 256}
)

func newTestRecorder(t *testing.T) (*Recorder, *prometheus.Registry, *clockwork.FakeClock) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	clock := clockwork.NewFakeClockAt(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	return New(reg, clock), reg, clock
}

// histogram returns the histogram series of name whose labels include all
// of want, failing the test if there is none.
func histogram(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) *dto.Histogram {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, metric := range family.GetMetric() {
			if labelsInclude(metric.GetLabel(), want) {
				return metric.GetHistogram()
			}
		}
	}
	t.Fatalf("no %s series with labels %v", name, want)
	return nil
}

func labelsInclude(labels []*dto.LabelPair, want map[string]string) bool {
	matched := 0
	for _, pair := range labels {
		if value, ok := want[pair.GetName()]; ok && value == pair.GetValue() {
			matched++
		}
	}
	return matched == len(want)
}

// cumulativeCount returns the count of the histogram's bucket whose upper
// bound is the smallest one at or above seconds.
func cumulativeCount(h *dto.Histogram, seconds float64) uint64 {
	for _, bucket := range h.GetBucket() {
		if seconds <= bucket.GetUpperBound() {
			return bucket.GetCumulativeCount()
		}
	}
	return h.GetSampleCount()
}

func TestObserveAcquireLabelsAndBuckets(t *testing.T) {
	rec, reg, _ := newTestRecorder(t)

	rec.ObserveAcquire(pythonKey, OutcomeHit, 3*time.Microsecond)
	rec.ObserveAcquire(pythonKey, OutcomeHit, 3*time.Microsecond)
	rec.ObserveAcquire(pythonKey, OutcomeCold, 2*time.Second)
	rec.ObserveAcquire(nodeKey, OutcomeMiss, 40*time.Microsecond)

	hits := histogram(t, reg, "warmpool_acquire_duration_seconds", map[string]string{
		"stack": "python", "version": "3.12", "vcpus": "2", "memory_mib": "512", "outcome": "hit",
	})
	if got := hits.GetSampleCount(); got != 2 {
		t.Errorf("python hit count = %d, want 2", got)
	}
	if got := cumulativeCount(hits, 4e-6); got != 2 {
		t.Errorf("python hits at or below 4µs = %d, want 2", got)
	}
	if got := cumulativeCount(hits, 1e-6); got != 0 {
		t.Errorf("python hits at or below 1µs = %d, want 0", got)
	}

	cold := histogram(t, reg, "warmpool_acquire_duration_seconds", map[string]string{
		"stack": "python", "outcome": "cold",
	})
	if got := cold.GetSampleCount(); got != 1 {
		t.Errorf("python cold count = %d, want 1", got)
	}
	if got := cold.GetSampleSum(); got != 2 {
		t.Errorf("python cold sum = %g s, want 2", got)
	}
	if got := cumulativeCount(cold, 1.0); got != 0 {
		t.Errorf("python cold acquires at or below 1s = %d, want 0", got)
	}

	miss := histogram(t, reg, "warmpool_acquire_duration_seconds", map[string]string{
		"stack": "node", "version": "22", "vcpus": "1", "memory_mib": "256", "outcome": "miss",
	})
	if got := miss.GetSampleCount(); got != 1 {
		t.Errorf("node miss count = %d, want 1", got)
	}

	if got := testutil.CollectAndCount(rec.acquireDuration); got != 3 {
		t.Errorf("acquire series = %d, want 3 (python hit, python cold, node miss)", got)
	}
}

func TestObserveAcquireInvalidOutcomePanics(t *testing.T) {
	rec, _, _ := newTestRecorder(t)
	defer func() {
		got := recover()
		if got == nil {
			t.Fatal("ObserveAcquire with outcome \"warm\" did not panic")
		}
		if !strings.Contains(fmt.Sprint(got), `"warm"`) {
			t.Errorf("panic %q does not name the outcome", got)
		}
		if n := testutil.CollectAndCount(rec.acquireDuration); n != 0 {
			t.Errorf("acquire series after rejected outcome = %d, want 0", n)
		}
	}()
	rec.ObserveAcquire(pythonKey, "warm", time.Millisecond)
}

func TestHistogramBucketRanges(t *testing.T) {
	if first, last := acquireBuckets[0], acquireBuckets[len(acquireBuckets)-1]; first > 1e-6 || last < 10 {
		t.Errorf("acquire buckets span %gs to %gs, want 1µs or less to 10s or more", first, last)
	}
	if first, last := lifecycleBuckets[0], lifecycleBuckets[len(lifecycleBuckets)-1]; first > 1e-3 || last < 30 {
		t.Errorf("restore buckets span %gs to %gs, want 1ms or less to 30s or more", first, last)
	}
}

func TestPoolHooksMoveSeries(t *testing.T) {
	rec, reg, _ := newTestRecorder(t)
	hooks := rec.PoolHooks()
	python := vm.Instance{ID: "python-1", Stack: pythonKey}
	node := vm.Instance{ID: "node-1", Stack: nodeKey}

	hooks.Restored(python, 120*time.Millisecond)
	hooks.Restored(node, 80*time.Millisecond)
	hooks.RestoreFailed("python-2", pythonKey, errors.New("snapshot load: no such file"), 30*time.Millisecond, 4*time.Second)
	hooks.Evicted(python, pool.EvictAge, nil)
	hooks.Evicted(node, pool.EvictUnhealthy, errors.New("guest heartbeat 9s old"))
	hooks.Evicted(vm.Instance{ID: "node-2", Stack: nodeKey}, pool.EvictUnhealthy, errors.New("vmm exited"))
	hooks.Destroyed(python, 5*time.Millisecond, nil)
	hooks.Destroyed(node, 7*time.Millisecond, errors.New("kill: permission denied"))

	const backoff = `
# HELP warmpool_restore_backoff_seconds Backoff before the next restore of a bucket after its last failure; 0 after a success.
# TYPE warmpool_restore_backoff_seconds gauge
warmpool_restore_backoff_seconds{memory_mib="256",stack="node",vcpus="1",version="22"} 0
warmpool_restore_backoff_seconds{memory_mib="512",stack="python",vcpus="2",version="3.12"} 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(backoff), "warmpool_restore_backoff_seconds"); err != nil {
		t.Error(err)
	}

	if got := testutil.ToFloat64(rec.restoreBackoff.WithLabelValues("python", "3.12", "2", "512")); got != 4 {
		t.Errorf("python restore backoff = %gs, want 4", got)
	}
	hooks.Restored(python, 100*time.Millisecond)
	if got := testutil.ToFloat64(rec.restoreBackoff.WithLabelValues("python", "3.12", "2", "512")); got != 0 {
		t.Errorf("python restore backoff after a success = %gs, want 0", got)
	}

	restoreOK := histogram(t, reg, "warmpool_restore_duration_seconds", map[string]string{"stack": "python", "result": "ok"})
	if got := restoreOK.GetSampleCount(); got != 2 {
		t.Errorf("python restores ok = %d, want 2", got)
	}
	restoreErr := histogram(t, reg, "warmpool_restore_duration_seconds", map[string]string{"stack": "python", "result": "failed"})
	if got := restoreErr.GetSampleSum(); got != 0.03 {
		t.Errorf("python failed restore time = %gs, want 0.03", got)
	}
	destroyErr := histogram(t, reg, "warmpool_destroy_duration_seconds", map[string]string{"stack": "node", "result": "failed"})
	if got := destroyErr.GetSampleCount(); got != 1 {
		t.Errorf("node failed destroys = %d, want 1", got)
	}
	destroyOK := histogram(t, reg, "warmpool_destroy_duration_seconds", map[string]string{"stack": "python", "result": "ok"})
	if got := destroyOK.GetSampleCount(); got != 1 {
		t.Errorf("python destroys ok = %d, want 1", got)
	}
}

func TestRecorderAndCollectorShareRegistry(t *testing.T) {
	reg := daemonRegistry(t)
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather Recorder and pool collector from one registry: %v", err)
	}
	// The pool collector owns the counters, so hooks must not add a second
	// series of them.
	series, err := testutil.GatherAndCount(reg, "warmpool_evictions_total")
	if err != nil {
		t.Fatalf("count evictions series: %v", err)
	}
	if series != 4 {
		t.Errorf("warmpool_evictions_total series = %d, want 4 (unhealthy, age, probe, depth of one bucket)", series)
	}
}

func TestForgetStackDeletesOnlyItsSeries(t *testing.T) {
	rec, reg, _ := newTestRecorder(t)
	hooks := rec.PoolHooks()
	for _, key := range []vm.StackKey{pythonKey, nodeKey} {
		inst := vm.Instance{ID: key.Name + "-1", Stack: key}
		rec.ObserveAcquire(key, OutcomeHit, time.Microsecond)
		hooks.Restored(inst, time.Millisecond)
		hooks.RestoreFailed(key.Name+"-2", key, errors.New("restore failed"), time.Millisecond, time.Second)
		hooks.Destroyed(inst, time.Millisecond, nil)
	}
	pythonSeries := func() int {
		families, err := reg.Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
		count := 0
		for _, family := range families {
			for _, metric := range family.GetMetric() {
				if labelsInclude(metric.GetLabel(), map[string]string{"stack": "python"}) {
					count++
				}
			}
		}
		return count
	}
	if got := pythonSeries(); got != 5 {
		t.Fatalf("python series before ForgetStack = %d, want 5", got)
	}

	rec.ForgetStack(pythonKey)

	if got := pythonSeries(); got != 0 {
		t.Errorf("python series after ForgetStack = %d, want 0", got)
	}
	if got := testutil.CollectAndCount(rec.acquireDuration); got != 1 {
		t.Errorf("acquire series after ForgetStack = %d, want 1 (node)", got)
	}
	if got := testutil.CollectAndCount(rec.restoreBackoff); got != 1 {
		t.Errorf("backoff series after ForgetStack = %d, want 1 (node)", got)
	}

	// A later acquire of the forgotten stack must land in a new, exported
	// series, not in the deleted one.
	rec.ObserveAcquire(pythonKey, OutcomeHit, time.Microsecond)
	hits := histogram(t, reg, "warmpool_acquire_duration_seconds", map[string]string{"stack": "python", "outcome": "hit"})
	if got := hits.GetSampleCount(); got != 1 {
		t.Errorf("python hits after ForgetStack and one acquire = %d, want 1", got)
	}
}

// TestForgetStackDuringAcquires is meant for -race: it checks that the
// acquire cache and ForgetStack share no unguarded state.
func TestForgetStackDuringAcquires(t *testing.T) {
	rec, reg, _ := newTestRecorder(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				rec.ObserveAcquire(pythonKey, OutcomeHit, time.Microsecond)
			}
		})
	}
	for range 50 {
		rec.ForgetStack(pythonKey)
	}
	wg.Wait()

	// Whatever the interleaving, the cache must now hold an exported child.
	before := testutil.CollectAndCount(rec.acquireDuration)
	rec.ObserveAcquire(pythonKey, OutcomeHit, time.Microsecond)
	hits := histogram(t, reg, "warmpool_acquire_duration_seconds", map[string]string{"stack": "python", "outcome": "hit"})
	if hits.GetSampleCount() == 0 {
		t.Error("acquire after concurrent ForgetStack calls was not exported")
	}
	if before > 1 {
		t.Errorf("acquire series = %d, want at most 1", before)
	}
}

func TestPoolHooksRecordEvents(t *testing.T) {
	rec, _, clock := newTestRecorder(t)
	hooks := rec.PoolHooks()
	start := clock.Now()

	hooks.RestoreFailed("python-2", pythonKey, errors.New("snapshot load: no such file"), time.Millisecond, 4*time.Second)
	clock.Advance(time.Second)
	hooks.Evicted(vm.Instance{ID: "node-1", Stack: nodeKey}, pool.EvictUnhealthy, errors.New("vmm exited"))
	clock.Advance(time.Second)
	hooks.Destroyed(vm.Instance{ID: "node-1", Stack: nodeKey}, time.Millisecond, nil)
	hooks.Destroyed(vm.Instance{ID: "node-3", Stack: nodeKey}, time.Millisecond, errors.New("kill: permission denied"))

	events := rec.RecentEvents()
	if len(events) != 3 {
		t.Fatalf("recent events = %d, want 3 (a successful destroy is not an event): %+v", len(events), events)
	}
	want := []Event{
		{Time: start.Add(2 * time.Second), Kind: EventDestroyFailed, Stack: nodeKey, VMID: "node-3", Error: "kill: permission denied"},
		{Time: start.Add(time.Second), Kind: EventEvicted, Stack: nodeKey, VMID: "node-1", Reason: "unhealthy", Error: "vmm exited"},
		{Time: start, Kind: EventRestoreFailed, Stack: pythonKey, VMID: "python-2", Error: "snapshot load: no such file", RetryIn: 4 * time.Second},
	}
	for i := range want {
		if events[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, events[i], want[i])
		}
	}
}

func TestRecentEventsBoundedNewestFirst(t *testing.T) {
	rec, _, clock := newTestRecorder(t)
	hooks := rec.PoolHooks()

	const total = EventCapacity + 5
	for i := range total {
		hooks.Evicted(vm.Instance{ID: fmt.Sprintf("vm-%d", i), Stack: pythonKey}, pool.EvictAge, nil)
		clock.Advance(time.Second)
	}

	events := rec.RecentEvents()
	if len(events) != EventCapacity {
		t.Fatalf("recent events = %d, want %d", len(events), EventCapacity)
	}
	if got, want := events[0].VMID, fmt.Sprintf("vm-%d", total-1); got != want {
		t.Errorf("newest event is %s, want %s", got, want)
	}
	if got, want := events[len(events)-1].VMID, fmt.Sprintf("vm-%d", total-EventCapacity); got != want {
		t.Errorf("oldest kept event is %s, want %s", got, want)
	}
	for i := 1; i < len(events); i++ {
		if !events[i].Time.Before(events[i-1].Time) {
			t.Fatalf("event %d at %v is not older than event %d at %v", i, events[i].Time, i-1, events[i-1].Time)
		}
	}

	events[0].VMID = "changed"
	if rec.RecentEvents()[0].VMID == "changed" {
		t.Error("RecentEvents returned the ring's own storage, want a copy")
	}
}

func TestRecentEventsEmpty(t *testing.T) {
	rec, _, _ := newTestRecorder(t)
	if events := rec.RecentEvents(); len(events) != 0 {
		t.Errorf("recent events of a new recorder = %+v, want none", events)
	}
}

func TestNewDuplicateRegistrationPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, nil)
	defer func() {
		if recover() == nil {
			t.Error("second New on the same registry did not panic")
		}
	}()
	New(reg, nil)
}
