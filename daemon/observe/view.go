package observe

import (
	"fmt"
	"time"

	"github.com/warmpool/warmpool/pool"
)

// statusView is the content of the status page. The HTML template renders it
// on the server and the page's script renders the same fields from JSON, so
// every value the page shows is formatted here, once.
type statusView struct {
	GeneratedAt string       `json:"generated_at"`
	Totals      totalsView   `json:"totals"`
	Buckets     []bucketView `json:"buckets"`
	Events      []eventView  `json:"events"`
}

// totalsView sums the bucket rows, so it always matches them. Only
// DestroyFailures, which the pool does not count per bucket, is since the
// pool started.
type totalsView struct {
	Hits              uint64 `json:"hits"`
	Misses            uint64 `json:"misses"`
	HitRate           string `json:"hit_rate"`
	Evictions         uint64 `json:"evictions"`
	RestoresOK        uint64 `json:"restores_ok"`
	RestoresFailed    uint64 `json:"restores_failed"`
	DestroyFailures   uint64 `json:"destroy_failures"`
	WarmVMs           int    `json:"warm_vms"`
	RestoringVMs      int    `json:"restoring_vms"`
	RegisteredBuckets int    `json:"registered_buckets"`
	// HandedOutVMs is nil when the page has no source for the count.
	HandedOutVMs *int `json:"handed_out_vms,omitempty"`
}

type bucketView struct {
	Stack          string `json:"stack"`
	Snapshot       string `json:"snapshot"`
	Warm           int    `json:"warm"`
	Restoring      int    `json:"restoring"`
	MinDepth       int    `json:"min_depth"`
	MaxDepth       int    `json:"max_depth"`
	BelowMin       bool   `json:"below_min"`
	Hits           uint64 `json:"hits"`
	Misses         uint64 `json:"misses"`
	HitRate        string `json:"hit_rate"`
	Evictions      uint64 `json:"evictions"`
	RestoresOK     uint64 `json:"restores_ok"`
	RestoresFailed uint64 `json:"restores_failed"`
	// LastError is the bucket's last restore error with its age and, while
	// the bucket backs off, the time to the next attempt.
	LastError string `json:"last_error"`
}

type eventView struct {
	Time   string `json:"time"`
	Age    string `json:"age"`
	Kind   string `json:"kind"`
	Stack  string `json:"stack"`
	VMID   string `json:"vm_id"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// buildStatusView formats stats and events as of now. A negative handedOut
// means the count is unknown.
func buildStatusView(stats pool.Stats, events []Event, now time.Time, handedOut int) statusView {
	view := statusView{
		GeneratedAt: formatClock(now),
		Totals: totalsView{
			DestroyFailures:   stats.DestroyFailures,
			RegisteredBuckets: len(stats.Buckets),
		},
		Buckets: make([]bucketView, 0, len(stats.Buckets)),
		Events:  make([]eventView, 0, len(events)),
	}
	if handedOut >= 0 {
		view.Totals.HandedOutVMs = &handedOut
	}

	// The pool-wide counters keep the counts of unregistered buckets, so
	// the totals are summed from the rows the page shows.
	totals := &view.Totals
	for _, b := range stats.Buckets {
		totals.WarmVMs += b.Warm
		totals.RestoringVMs += b.Restoring
		totals.Hits += b.Hits
		totals.Misses += b.Misses
		totals.Evictions += b.Evictions
		totals.RestoresOK += b.RestoresOK
		totals.RestoresFailed += b.RestoresFailed
		view.Buckets = append(view.Buckets, buildBucketView(b, now))
	}
	totals.HitRate = formatHitRate(totals.Hits, totals.Misses)

	for _, e := range events {
		view.Events = append(view.Events, eventView{
			Time:   formatClock(e.Time),
			Age:    formatAge(now.Sub(e.Time)),
			Kind:   string(e.Kind),
			Stack:  e.Stack.String(),
			VMID:   e.VMID,
			Reason: eventReason(e),
			Error:  e.Error,
		})
	}
	return view
}

func buildBucketView(b pool.BucketStats, now time.Time) bucketView {
	view := bucketView{
		Stack:          b.Key.String(),
		Snapshot:       b.Snapshot.ID,
		Warm:           b.Warm,
		Restoring:      b.Restoring,
		MinDepth:       b.MinDepth,
		MaxDepth:       b.MaxDepth,
		BelowMin:       b.Warm+b.Restoring < b.MinDepth,
		Hits:           b.Hits,
		Misses:         b.Misses,
		HitRate:        formatHitRate(b.Hits, b.Misses),
		Evictions:      b.Evictions,
		RestoresOK:     b.RestoresOK,
		RestoresFailed: b.RestoresFailed,
	}
	if b.LastError != "" {
		view.LastError = fmt.Sprintf("%s (%s)", b.LastError, formatAge(now.Sub(b.LastErrorAt)))
		if b.RetryAt.After(now) {
			view.LastError += fmt.Sprintf(", retry in %s", roundDuration(b.RetryAt.Sub(now)))
		}
	}
	return view
}

// eventReason returns the text of the page's reason column: the eviction
// reason, or the backoff that follows a failed restore.
func eventReason(e Event) string {
	if e.Reason != "" {
		return e.Reason
	}
	if e.Kind == EventRestoreFailed && e.RetryIn > 0 {
		return fmt.Sprintf("retry in %s", roundDuration(e.RetryIn))
	}
	return ""
}

// formatHitRate returns hits as a percentage of all acquires, or "-" before
// the first acquire.
func formatHitRate(hits, misses uint64) string {
	total := hits + misses
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(hits)/float64(total))
}

func formatClock(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// formatAge returns how long ago something happened, to the second.
func formatAge(d time.Duration) string {
	if d < time.Second {
		return "just now"
	}
	return roundDuration(d).String() + " ago"
}

// roundDuration rounds d to the second, or to the millisecond below one
// second, so the page does not show nanoseconds.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}
