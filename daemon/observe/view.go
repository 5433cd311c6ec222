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

// buildStatusView formats stats and events as of now.
func buildStatusView(stats pool.Stats, events []Event, now time.Time) statusView {
	view := statusView{
		GeneratedAt: formatClock(now),
		Totals: totalsView{
			Hits:              stats.Hits,
			Misses:            stats.Misses,
			HitRate:           formatHitRate(stats.Hits, stats.Misses),
			Evictions:         stats.UnhealthyEvictions + stats.AgeEvictions + stats.ProbeEvictions,
			RestoresOK:        stats.RestoresOK,
			RestoresFailed:    stats.RestoresFailed,
			DestroyFailures:   stats.DestroyFailures,
			RegisteredBuckets: len(stats.Buckets),
		},
		Buckets: make([]bucketView, 0, len(stats.Buckets)),
		Events:  make([]eventView, 0, len(events)),
	}
	for _, b := range stats.Buckets {
		view.Totals.WarmVMs += b.Warm
		view.Totals.RestoringVMs += b.Restoring
		view.Buckets = append(view.Buckets, buildBucketView(b, now))
	}
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
