package pool

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

var bucketLabels = []string{"stack", "version", "vcpus", "memory_mib"}

// collector exposes a pool's Stats as Prometheus metrics.
type collector struct {
	pool *Pool

	hits, misses, evictions, restores   *prometheus.Desc
	warm, restoring, minDepth, maxDepth *prometheus.Desc
	destroys                            *prometheus.Desc
}

// NewCollector returns a Prometheus collector that reads p.Stats on every
// scrape. Bucket metrics carry the labels stack, version, vcpus and
// memory_mib.
func NewCollector(p *Pool) prometheus.Collector {
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(append([]string{}, bucketLabels...), extra...), nil)
	}
	return &collector{
		pool:      p,
		hits:      desc("warmpool_acquire_hits_total", "Acquires that returned a warm VM."),
		misses:    desc("warmpool_acquire_misses_total", "Acquires that found no warm VM."),
		evictions: desc("warmpool_evictions_total", "Warm VMs destroyed by the pool, by reason.", "reason"),
		restores:  desc("warmpool_restores_total", "Finished snapshot restores, by result.", "result"),
		warm:      desc("warmpool_warm_vms", "VMs warm and ready to hand out."),
		restoring: desc("warmpool_restoring_vms", "Restores in flight."),
		minDepth:  desc("warmpool_min_depth", "Warm plus restoring VMs below which the bucket is refilled."),
		maxDepth:  desc("warmpool_max_depth", "Warm plus restoring VMs up to which the bucket is refilled."),
		destroys: prometheus.NewDesc("warmpool_destroys_total",
			"Destroys of pool-owned VMs, by result.", []string{"result"}, nil),
	}
}

// Describe sends the descriptors of every metric the collector exports.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.hits, c.misses, c.evictions, c.restores,
		c.warm, c.restoring, c.minDepth, c.maxDepth, c.destroys,
	} {
		ch <- d
	}
}

// Collect sends the current value of every metric.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}

	for _, b := range s.Buckets {
		l := []string{b.Key.Name, b.Key.Version, strconv.Itoa(b.Key.VCPUs), strconv.Itoa(b.Key.MemoryMiB)}
		with := func(v string) []string { return append(append([]string{}, l...), v) }

		counter(c.hits, b.Hits, l...)
		counter(c.misses, b.Misses, l...)
		counter(c.evictions, b.UnhealthyEvictions, with(string(EvictUnhealthy))...)
		counter(c.evictions, b.AgeEvictions, with(string(EvictAge))...)
		counter(c.evictions, b.ProbeEvictions, with(string(EvictProbe))...)
		counter(c.evictions, b.DepthEvictions, with(string(EvictDepth))...)
		counter(c.restores, b.RestoresOK, with("ok")...)
		counter(c.restores, b.RestoresFailed, with("failed")...)
		gauge(c.warm, b.Warm, l...)
		gauge(c.restoring, b.Restoring, l...)
		gauge(c.minDepth, b.MinDepth, l...)
		gauge(c.maxDepth, b.MaxDepth, l...)
	}
	counter(c.destroys, s.Destroyed, "ok")
	counter(c.destroys, s.DestroyFailures, "failed")
}
