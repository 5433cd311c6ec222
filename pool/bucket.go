package pool

import (
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
	restoresOK     atomic.Uint64
	restoresFailed atomic.Uint64
	_              [cacheLine]byte
}

// bucket holds the warm VMs of one stack key.
type bucket struct {
	key      vm.StackKey
	snap     vm.Snapshot
	minDepth int
	maxDepth int

	counters bucketCounters

	// mu guards every field below it. Hold it only to read or change them:
	// never across a Provider call, a hook, or a channel send that can block.
	// Methods named ...Locked expect it held.
	mu        sync.Mutex
	warm      fifo
	restoring int  // restores started for this bucket and not yet finished
	filling   bool // refilling towards maxDepth, see planRefill
	failures  int  // consecutive failed restores
	retryAt   time.Time
	lastErr   string
	lastErrAt time.Time
	// removedBy is empty while the bucket is registered. Unregister or Close
	// sets it when it drains the bucket, and after that no entry is added.
	removedBy EvictReason
	// refilled is closed when a VM turns warm or the bucket is removed. It is
	// nil while no AcquireWait waits on the bucket.
	refilled chan struct{}
	_        [cacheLine]byte
}

// popOldest removes the oldest warm entry. It reports ok false when the
// bucket is empty, and returns the reason when the bucket has been removed.
// left is the number of warm and restoring VMs that remain.
func (b *bucket) popOldest() (e entry, ok bool, left int, removedBy EvictReason) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy != "" {
		return entry{}, false, 0, b.removedBy
	}
	e, ok = b.warm.popOldest()
	return e, ok, b.warm.len() + b.restoring, ""
}

// addWarmLocked makes e warm and wakes any AcquireWait on the bucket.
func (b *bucket) addWarmLocked(e entry) {
	b.warm.push(e)
	b.signalLocked()
}

func (b *bucket) signalLocked() {
	if b.refilled != nil {
		close(b.refilled)
		b.refilled = nil
	}
}

// removeLocked marks the bucket removed and returns its warm entries.
func (b *bucket) removeLocked(reason EvictReason) []entry {
	b.removedBy = reason
	b.signalLocked()
	return b.warm.drain()
}

// refillSignal returns a channel that is closed when a VM turns warm in the
// bucket or the bucket is removed.
func (b *bucket) refillSignal() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removedBy != "" {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	if b.refilled == nil {
		b.refilled = make(chan struct{})
	}
	return b.refilled
}
