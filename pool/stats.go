package pool

import (
	"time"

	"github.com/warmpool/warmpool/vm"
)

// Stats is a snapshot of the pool's counters. The pool-wide counters include
// buckets that have been unregistered.
type Stats struct {
	Hits, Misses, UnhealthyEvictions, AgeEvictions, ProbeEvictions uint64
	RestoresOK, RestoresFailed, Destroyed, DestroyFailures         uint64
	Buckets                                                        []BucketStats // sorted by key string
}

// BucketStats is a snapshot of one bucket. Evictions is the sum of its
// unhealthy, age and probe evictions.
type BucketStats struct {
	Key                                 vm.StackKey
	Snapshot                            vm.Snapshot
	Warm, Restoring, MinDepth, MaxDepth int
	Hits, Misses, Evictions             uint64
	UnhealthyEvictions, AgeEvictions    uint64
	ProbeEvictions                      uint64
	RestoresOK, RestoresFailed          uint64
	LastError                           string
	LastErrorAt                         time.Time
	RetryAt                             time.Time // zero when not backing off
}

// Stats returns a snapshot of the pool's counters and of every bucket.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := p.retired
	p.mu.Unlock()
	s.Buckets = nil
	s.Destroyed = p.destroyed.Load()
	s.DestroyFailures = p.destroyFailures.Load()

	now := p.clock.Now()
	for _, b := range p.reg.Load().list {
		bs := b.stats()
		if !bs.RetryAt.After(now) {
			bs.RetryAt = time.Time{}
		}
		s.addBucket(bs)
		s.Buckets = append(s.Buckets, bs)
	}
	return s
}

// addBucket adds the counters of bs to the pool-wide counters of s.
func (s *Stats) addBucket(bs BucketStats) {
	s.Hits += bs.Hits
	s.Misses += bs.Misses
	s.UnhealthyEvictions += bs.UnhealthyEvictions
	s.AgeEvictions += bs.AgeEvictions
	s.ProbeEvictions += bs.ProbeEvictions
	s.RestoresOK += bs.RestoresOK
	s.RestoresFailed += bs.RestoresFailed
}

func (b *bucket) stats() BucketStats {
	bs := BucketStats{
		Key:                b.key,
		Snapshot:           b.snap,
		MinDepth:           b.minDepth,
		MaxDepth:           b.maxDepth,
		Hits:               b.counters.hits.Load(),
		Misses:             b.counters.misses.Load(),
		UnhealthyEvictions: b.counters.unhealthy.Load(),
		AgeEvictions:       b.counters.aged.Load(),
		ProbeEvictions:     b.counters.probed.Load(),
		RestoresOK:         b.counters.restoresOK.Load(),
		RestoresFailed:     b.counters.restoresFailed.Load(),
	}
	bs.Evictions = bs.UnhealthyEvictions + bs.AgeEvictions + bs.ProbeEvictions

	b.mu.Lock()
	defer b.mu.Unlock()
	bs.Warm = b.warm.len()
	bs.Restoring = b.restoring
	bs.LastError = b.lastErr
	bs.LastErrorAt = b.lastErrAt
	bs.RetryAt = b.retryAt
	return bs
}
