package pool

import (
	"slices"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// Stats is a snapshot of the pool's counters. The pool-wide counters include
// buckets that have been unregistered.
type Stats struct {
	Hits, Misses, UnhealthyEvictions, AgeEvictions, ProbeEvictions uint64
	DepthEvictions                                                 uint64
	RestoresOK, RestoresFailed, Destroyed, DestroyFailures         uint64
	Buckets                                                        []BucketStats // sorted by key string
}

// BucketStats is a snapshot of one bucket. Evictions is the sum of its
// unhealthy, age, probe and depth evictions.
type BucketStats struct {
	Key                                 vm.StackKey
	Snapshot                            vm.Snapshot
	Warm, Restoring, MinDepth, MaxDepth int
	Hits, Misses, Evictions             uint64
	UnhealthyEvictions, AgeEvictions    uint64
	ProbeEvictions, DepthEvictions      uint64
	RestoresOK, RestoresFailed          uint64
	LastError                           string
	LastErrorAt                         time.Time
	RetryAt                             time.Time // zero when not backing off
}

// Stats returns a snapshot of the pool's counters and of every bucket. The
// pool-wide totals never decrease from one call to the next.
func (p *Pool) Stats() Stats {
	// Register and Unregister move a bucket between the registry and
	// retired under p.mu, so reading both under it counts each bucket once.
	p.mu.Lock()
	p.foldRetiredLocked()
	s := p.retiredTotals
	retired := slices.Clone(p.retired) // foldRetiredLocked changes the array in place
	list := p.reg.Load().list
	p.mu.Unlock()

	for _, b := range retired {
		s.addBucket(b.stats())
	}
	s.Destroyed = p.destroyed.Load()
	s.DestroyFailures = p.destroyFailures.Load()

	now := p.clock.Now()
	for _, b := range list {
		bs := b.stats()
		if !bs.RetryAt.After(now) {
			bs.RetryAt = time.Time{}
		}
		s.addBucket(bs)
		s.Buckets = append(s.Buckets, bs)
	}
	return s
}

// foldRetiredLocked adds the counters of each settled retired bucket to
// retiredTotals and drops the bucket. p.mu must be held.
func (p *Pool) foldRetiredLocked() {
	p.retired = slices.DeleteFunc(p.retired, func(b *bucket) bool {
		b.mu.Lock()
		settled := b.settledLocked()
		b.mu.Unlock()
		if settled {
			p.retiredTotals.addBucket(b.stats())
		}
		return settled
	})
}

// addBucket adds the counters of bs to the pool-wide counters of s.
func (s *Stats) addBucket(bs BucketStats) {
	s.Hits += bs.Hits
	s.Misses += bs.Misses
	s.UnhealthyEvictions += bs.UnhealthyEvictions
	s.AgeEvictions += bs.AgeEvictions
	s.ProbeEvictions += bs.ProbeEvictions
	s.DepthEvictions += bs.DepthEvictions
	s.RestoresOK += bs.RestoresOK
	s.RestoresFailed += bs.RestoresFailed
}

func (b *bucket) stats() BucketStats {
	bs := BucketStats{
		Key:                b.key,
		Snapshot:           b.snap,
		Hits:               b.counters.hits.Load(),
		Misses:             b.counters.misses.Load(),
		UnhealthyEvictions: b.counters.unhealthy.Load(),
		AgeEvictions:       b.counters.aged.Load(),
		ProbeEvictions:     b.counters.probed.Load(),
		DepthEvictions:     b.counters.depth.Load(),
		RestoresOK:         b.counters.restoresOK.Load(),
		RestoresFailed:     b.counters.restoresFailed.Load(),
	}
	bs.Evictions = bs.UnhealthyEvictions + bs.AgeEvictions + bs.ProbeEvictions + bs.DepthEvictions

	b.mu.Lock()
	defer b.mu.Unlock()
	bs.MinDepth = b.minDepth
	bs.MaxDepth = b.maxDepth
	bs.Warm = b.warm.len()
	bs.Restoring = b.restoring
	bs.LastError = b.lastErr
	bs.LastErrorAt = b.lastErrAt
	bs.RetryAt = b.retryAt
	return bs
}
