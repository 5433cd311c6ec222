// Package observe turns the pool's hooks and stats snapshots into Prometheus
// metrics, a ring of recent evictions and failures, and an HTML status page.
//
// The pool package does not log or keep time series itself. A Recorder is
// installed as the pool's Hooks and as the daemon's acquire observer.
// pool.NewCollector exports the counters that the pool's Stats hold: depth
// gauges, hits, misses, evictions by reason, and restores and destroys by
// result. The Recorder registers only what needs hook events: latency
// histograms and the backoff of failing buckets. It uses the same stack
// labels and the same result values ("ok", "failed") as the collector.
package observe

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// Acquire outcomes accepted by ObserveAcquire, used as the "outcome" label.
const (
	// OutcomeHit is an acquire served from a warm VM.
	OutcomeHit = "hit"
	// OutcomeMiss is an acquire that found its bucket empty and returned
	// without a VM.
	OutcomeMiss = "miss"
	// OutcomeCold is an acquire that found its bucket empty and restored a
	// VM directly from the snapshot.
	OutcomeCold = "cold"
	// OutcomeError is an acquire that failed for any other reason.
	OutcomeError = "error"
)

// Values of the "result" label on the restore and destroy histograms.
const (
	resultOK     = "ok"
	resultFailed = "failed"
)

// stackLabels are the labels that identify a bucket on every series,
// matching the labels of pool.NewCollector.
var stackLabels = []string{"stack", "version", "vcpus", "memory_mib"}

// Histogram buckets in seconds. A warm acquire takes microseconds and a
// cold acquire takes as long as a restore, so acquire buckets run from 1µs
// to about 16s by powers of 4. Restores and destroys run from 1ms to about
// 60s by powers of 2.5.
var (
	acquireBuckets   = prometheus.ExponentialBuckets(1e-6, 4, 13)
	lifecycleBuckets = prometheus.ExponentialBuckets(1e-3, 2.5, 13)
)

// Recorder collects metrics and recent events from a pool and serves the
// status page. All methods are safe for concurrent use.
type Recorder struct {
	clock  clockwork.Clock
	events *eventRing

	acquireDuration *prometheus.HistogramVec
	// acquireObservers caches the child of acquireDuration for each
	// acquireSeries, because WithLabelValues formats and hashes the labels
	// on every call and costs several times a warm acquire.
	acquireObservers sync.Map
	// forgetMu serializes inserts into acquireObservers with ForgetStack, so
	// that ForgetStack cannot leave a deleted child in the cache.
	forgetMu        sync.Mutex
	restoreDuration *prometheus.HistogramVec
	destroyDuration *prometheus.HistogramVec
	restoreBackoff  *prometheus.GaugeVec

	// handedOutCount is set by SetHandedOutCount.
	handedOutCount atomic.Pointer[func() int]
}

// acquireSeries identifies one child of the acquire histogram.
type acquireSeries struct {
	key     vm.StackKey
	outcome string
}

// New creates a Recorder and registers its metrics on reg. It panics if reg
// already has a metric of the same name, as prometheus.MustRegister does.
// A nil clock means the real clock.
func New(reg prometheus.Registerer, clock clockwork.Clock) *Recorder {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	r := &Recorder{
		clock:  clock,
		events: newEventRing(EventCapacity),
		acquireDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warmpool_acquire_duration_seconds",
			Help:    "Time taken by an acquire request, by outcome (hit, miss, cold, error).",
			Buckets: acquireBuckets,
		}, stackLabelsAnd("outcome")),
		restoreDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warmpool_restore_duration_seconds",
			Help:    "Time taken by a pool restore from snapshot, by result (ok, failed).",
			Buckets: lifecycleBuckets,
		}, stackLabelsAnd("result")),
		destroyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "warmpool_destroy_duration_seconds",
			Help:    "Time taken to destroy a pool-owned VM, by result (ok, failed).",
			Buckets: lifecycleBuckets,
		}, stackLabelsAnd("result")),
		restoreBackoff: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warmpool_restore_backoff_seconds",
			Help: "Backoff before the next restore of a bucket after its last failure; 0 after a success.",
		}, stackLabels),
	}
	reg.MustRegister(
		r.acquireDuration,
		r.restoreDuration,
		r.destroyDuration,
		r.restoreBackoff,
	)
	return r
}

// ObserveAcquire records one acquire request and its latency. The outcome is
// one of OutcomeHit, OutcomeMiss, OutcomeCold or OutcomeError. Any other
// value panics, because it is a programming error that would otherwise
// create a stray label value.
//
// NOTE: each distinct key adds series that are never removed, so callers
// should pass only registered stacks. A key taken from a request that the
// pool rejected with ErrUnknownStack lets clients grow the metrics without
// bound.
func (r *Recorder) ObserveAcquire(key vm.StackKey, outcome string, took time.Duration) {
	switch outcome {
	case OutcomeHit, OutcomeMiss, OutcomeCold, OutcomeError:
	default:
		panic(fmt.Sprintf("observe: invalid acquire outcome %q: use hit, miss, cold or error", outcome))
	}
	r.acquireObserver(key, outcome).Observe(took.Seconds())
}

func (r *Recorder) acquireObserver(key vm.StackKey, outcome string) prometheus.Observer {
	series := acquireSeries{key: key, outcome: outcome}
	if observer, ok := r.acquireObservers.Load(series); ok {
		return observer.(prometheus.Observer)
	}

	r.forgetMu.Lock()
	defer r.forgetMu.Unlock()
	observer := r.acquireDuration.WithLabelValues(labelValues(key, outcome)...)
	r.acquireObservers.Store(series, observer)
	return observer
}

// PoolHooks returns hooks that observe restore and destroy latencies and
// record evictions, restore failures and destroy failures as recent events.
// Combine them with other hooks using pool.CombineHooks.
func (r *Recorder) PoolHooks() pool.Hooks {
	return pool.Hooks{
		Restored:      r.restored,
		RestoreFailed: r.restoreFailed,
		Evicted:       r.evicted,
		Destroyed:     r.destroyed,
	}
}

func (r *Recorder) restored(inst vm.Instance, took time.Duration) {
	r.restoreDuration.WithLabelValues(labelValues(inst.Stack, resultOK)...).Observe(took.Seconds())
	r.restoreBackoff.WithLabelValues(labelValues(inst.Stack)...).Set(0)
}

func (r *Recorder) restoreFailed(id string, key vm.StackKey, err error, took, retryIn time.Duration) {
	r.restoreDuration.WithLabelValues(labelValues(key, resultFailed)...).Observe(took.Seconds())
	r.restoreBackoff.WithLabelValues(labelValues(key)...).Set(retryIn.Seconds())
	r.events.add(Event{
		Time:    r.clock.Now(),
		Kind:    EventRestoreFailed,
		Stack:   key,
		VMID:    id,
		Error:   errorText(err),
		RetryIn: retryIn,
	})
}

func (r *Recorder) evicted(inst vm.Instance, reason pool.EvictReason, cause error) {
	r.events.add(Event{
		Time:   r.clock.Now(),
		Kind:   EventEvicted,
		Stack:  inst.Stack,
		VMID:   inst.ID,
		Reason: string(reason),
		Error:  errorText(cause),
	})
}

func (r *Recorder) destroyed(inst vm.Instance, took time.Duration, err error) {
	if err == nil {
		r.destroyDuration.WithLabelValues(labelValues(inst.Stack, resultOK)...).Observe(took.Seconds())
		return
	}
	r.destroyDuration.WithLabelValues(labelValues(inst.Stack, resultFailed)...).Observe(took.Seconds())
	r.events.add(Event{
		Time:  r.clock.Now(),
		Kind:  EventDestroyFailed,
		Stack: inst.Stack,
		VMID:  inst.ID,
		Error: err.Error(),
	})
}

// ForgetStack deletes every series of key, so that a stack that was
// unregistered stops showing in queries. An acquire of key that runs at the
// same time may still be counted in the deleted series and so be lost.
// Recent events of the stack stay in the ring until newer events push them
// out.
func (r *Recorder) ForgetStack(key vm.StackKey) {
	r.forgetMu.Lock()
	defer r.forgetMu.Unlock()
	r.acquireObservers.Range(func(cached, _ any) bool {
		if cached.(acquireSeries).key == key {
			r.acquireObservers.Delete(cached)
		}
		return true
	})

	labels := prometheus.Labels{
		"stack":      key.Name,
		"version":    key.Version,
		"vcpus":      strconv.Itoa(key.VCPUs),
		"memory_mib": strconv.Itoa(key.MemoryMiB),
	}
	r.acquireDuration.DeletePartialMatch(labels)
	r.restoreDuration.DeletePartialMatch(labels)
	r.destroyDuration.DeletePartialMatch(labels)
	r.restoreBackoff.DeletePartialMatch(labels)
}

// RecentEvents returns the most recent evictions and failures, newest
// first. It keeps at most EventCapacity of them.
func (r *Recorder) RecentEvents() []Event {
	return r.events.list()
}

// stackLabelsAnd returns the stack label names followed by name, in a new
// slice so that no two metrics share a backing array.
func stackLabelsAnd(name string) []string {
	names := make([]string, 0, len(stackLabels)+1)
	names = append(names, stackLabels...)
	return append(names, name)
}

// labelValues returns the stack label values of key followed by extra.
func labelValues(key vm.StackKey, extra ...string) []string {
	values := []string{key.Name, key.Version, strconv.Itoa(key.VCPUs), strconv.Itoa(key.MemoryMiB)}
	return append(values, extra...)
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
