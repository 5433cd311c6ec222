package pool

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// entry is one warm VM owned by a bucket.
type entry struct {
	inst vm.Instance
}

// fifo is a ring buffer of warm entries, oldest first. It stores entries by
// value, so pop and push cost no allocation once the ring has grown to the
// bucket's depth.
type fifo struct {
	buf  []entry
	head int
	n    int
}

func (q *fifo) len() int { return q.n }

// at returns the entry at position i, counted from the oldest. The pointer
// is valid until the next change to q.
func (q *fifo) at(i int) *entry { return &q.buf[(q.head+i)%len(q.buf)] }

func (q *fifo) push(e entry) {
	if q.n == len(q.buf) {
		grown := make([]entry, max(4, 2*len(q.buf)))
		for i := range q.n {
			grown[i] = *q.at(i)
		}
		q.buf = grown
		q.head = 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = e
	q.n++
}

// popOldest removes and returns the oldest entry. It reports false if q is
// empty.
func (q *fifo) popOldest() (entry, bool) {
	if q.n == 0 {
		return entry{}, false
	}
	e := q.buf[q.head]
	q.buf[q.head] = entry{} // drop references so the strings can be freed
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return e, true
}

// removeAt removes the entries at the given ascending positions, keeps the
// order of the others, and returns the removed entries.
func (q *fifo) removeAt(positions []int) []entry {
	if len(positions) == 0 {
		return nil
	}
	removed := make([]entry, 0, len(positions))
	kept := make([]entry, 0, q.n)
	next := 0
	for i := range q.n {
		e := *q.at(i)
		if next < len(positions) && positions[next] == i {
			removed = append(removed, e)
			next++
			continue
		}
		kept = append(kept, e)
	}
	q.drain()
	for _, e := range kept {
		q.push(e)
	}
	return removed
}

// removeID removes the entry of the VM with the given id and reports whether
// it was there.
func (q *fifo) removeID(id string) bool {
	for i := range q.n {
		if q.at(i).inst.ID == id {
			q.removeAt([]int{i})
			return true
		}
	}
	return false
}

// drain empties q and returns its entries, oldest first.
func (q *fifo) drain() []entry {
	out := make([]entry, 0, q.n)
	for {
		e, ok := q.popOldest()
		if !ok {
			return out
		}
		out = append(out, e)
	}
}

// cacheLine is the size that keeps the atomic counters of different buckets
// and the bucket mutex on separate cache lines on common CPUs.
const cacheLine = 64

// bucketCounters are monotonic counters updated without the bucket lock.
type bucketCounters struct {
	hits           atomic.Uint64
	misses         atomic.Uint64
	unhealthy      atomic.Uint64
	aged           atomic.Uint64
	probed         atomic.Uint64
	depth          atomic.Uint64 // evicted by SetDepth
	restoresOK     atomic.Uint64
	restoresFailed atomic.Uint64
	// acquiring counts Acquire calls between popOldest and counting their
	// result, so that Stats can tell when a removed bucket's counters are
	// final.
	acquiring atomic.Int64
	_         [cacheLine]byte
}

// bucket holds the warm VMs of one stack key.
type bucket struct {
	key  vm.StackKey
	snap vm.Snapshot

	counters bucketCounters

	// mu guards every field below it. Hold it only to read or change them:
	// never across a Provider call, a hook, or a channel send that can block.
	// Methods named ...Locked expect it held.
	mu       sync.Mutex
	minDepth int // changed by SetDepth
	maxDepth int
	warm     fifo
	// restoring counts restores started for this bucket and not finished.
	restoring int
	filling   bool // refilling towards maxDepth, see planRefill
	failures  int  // consecutive failed rounds of restores, see failRound
	// failRound goes up with every failure counted in failures and every
	// success, so that a restore started before the last of those does not
	// count another backoff step.
	failRound uint64
	retryAt   time.Time
	lastErr   string
	lastErrAt time.Time
	// removedBy is empty while the bucket is registered. Unregister or Close
	// sets it when it drains the bucket, and after that no entry is added.
	removedBy EvictReason
	// waiters are the AcquireWait calls on the bucket, longest waiting
	// first. Each channel has a buffer of one. A VM that turns warm sends on
	// the first and removes it, and removing the bucket closes them all.
	waiters []chan struct{}
	_       [cacheLine]byte
}

// popOldest removes the oldest warm entry. It reports ok false when the
// bucket is empty, and returns the reason when the bucket has been removed.
// short reports that warm and restoring VMs are below MinDepth or that the
// bucket was empty, so the refiller should run. An empty bucket starts
// filling towards MaxDepth, which is how a bucket with MinDepth 0 fills on
// demand.
func (b *bucket) popOldest() (e entry, ok, short bool, removedBy EvictReason) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy != "" {
		return entry{}, false, false, b.removedBy
	}
	b.counters.acquiring.Add(1) // the caller subtracts it after counting
	e, ok = b.warm.popOldest()
	if !ok {
		b.filling = true
	}
	return e, ok, !ok || b.warm.len()+b.restoring < b.minDepth, ""
}

// addWarmLocked makes e warm and wakes the AcquireWait call that has waited
// longest.
func (b *bucket) addWarmLocked(e entry) {
	b.warm.push(e)
	b.wakeWaiterLocked()
}

func (b *bucket) wakeWaiterLocked() {
	if len(b.waiters) == 0 {
		return
	}
	w := b.waiters[0]
	b.waiters = slices.Delete(b.waiters, 0, 1)
	w <- struct{}{} // never blocks: w has a buffer of one and gets one send
}

// settledLocked reports whether the counters of a removed bucket can no
// longer change: no restore and no Acquire is still running on it.
func (b *bucket) settledLocked() bool {
	return b.removedBy != "" && b.restoring == 0 && b.counters.acquiring.Load() == 0
}

// removeLocked marks the bucket removed, wakes every waiter and returns the
// warm entries.
func (b *bucket) removeLocked(reason EvictReason) []entry {
	b.removedBy = reason
	for _, w := range b.waiters {
		close(w)
	}
	b.waiters = nil
	entries := b.warm.drain()
	b.warm = fifo{} // a removed bucket is kept for Stats, but not its ring
	return entries
}

// addWaiter queues a waiter and returns its channel, which receives when a
// VM turns warm or is closed when the bucket is removed.
func (b *bucket) addWaiter() chan struct{} {
	w := make(chan struct{}, 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy != "" {
		close(w)
		return w
	}
	b.waiters = append(b.waiters, w)
	return w
}

// cancelWaiter removes w from the queue. If w was already woken for a VM it
// will not take, the wake-up passes to the next waiter.
func (b *bucket) cancelWaiter(w chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := slices.Index(b.waiters, w); i >= 0 {
		b.waiters = slices.Delete(b.waiters, i, i+1)
		return
	}
	select {
	case _, open := <-w:
		if open && b.warm.len() > 0 {
			b.wakeWaiterLocked()
		}
	default:
	}
}
