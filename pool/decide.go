package pool

import "time"

// The refiller's decisions are pure functions of the state it reads under the
// bucket locks, so that tables of named cases can test them.

// planRefill returns how many restores a bucket should start and whether it
// is still filling. A bucket starts filling when its warm plus restoring VMs
// fall below minDepth and stops once they reach maxDepth. Between the two it
// keeps the state it had, which gives the refill its hysteresis.
func planRefill(warm, restoring, minDepth, maxDepth int, filling bool) (start int, stillFilling bool) {
	have := warm + restoring
	if have < minDepth {
		filling = true
	}
	if !filling {
		return 0, false
	}
	if have >= maxDepth {
		return 0, false
	}
	return maxDepth - have, true
}

// shareRestores splits free restore slots among buckets one slot at a time,
// in turn, beginning with index first, so that a bucket with a large need
// cannot take every slot. It returns how many restores each bucket may start.
func shareRestores(needs []int, free, first int) []int {
	grants := make([]int, len(needs))
	if len(needs) == 0 {
		return grants
	}
	first %= len(needs)
	for free > 0 {
		granted := false
		for i := range needs {
			j := (first + i) % len(needs)
			if free == 0 {
				break
			}
			if grants[j] < needs[j] {
				grants[j]++
				free--
				granted = true
			}
		}
		if !granted {
			break
		}
	}
	return grants
}

// restoreShare returns how many restores one bucket may have in flight: an
// equal share of concurrency among the registered buckets, rounded up, and
// at least one. With two or more buckets a bucket whose restores hang holds
// only its share, so the others keep restoring until RestoreTimeout frees
// the slots. When several buckets hang at once, they can still hold every
// slot.
func restoreShare(concurrency, buckets int) int {
	if buckets <= 1 {
		return concurrency
	}
	return max(1, (concurrency+buckets-1)/buckets)
}

// backoffDelay returns the wait before the next restore of a bucket after
// failures consecutive failed restores. The base delay doubles from initial
// with each failure up to maxDelay, and the result lies in [base/2, base)
// depending on jitter, a number in [0, 1). No failures means no wait.
func backoffDelay(failures int, initial, maxDelay time.Duration, jitter float64) time.Duration {
	if failures < 1 {
		return 0
	}
	base := initial
	for i := 1; i < failures && base < maxDelay; i++ {
		base *= 2
	}
	if base > maxDelay {
		base = maxDelay
	}
	half := base / 2
	return half + time.Duration(jitter*float64(base-half))
}

// expiredIndices returns the positions in restoredAt of the VMs that have
// been warm for maxAge or longer at now.
func expiredIndices(restoredAt []time.Time, now time.Time, maxAge time.Duration) []int {
	var expired []int
	for i, t := range restoredAt {
		if now.Sub(t) >= maxAge {
			expired = append(expired, i)
		}
	}
	return expired
}
