package pool

import (
	"slices"
	"testing"
	"time"
)

func TestPlanRefill(t *testing.T) {
	tests := []struct {
		name                        string
		warm, restoring, minD, maxD int
		filling                     bool
		wantStart                   int
		wantFilling                 bool
	}{
		{"empty bucket fills to max", 0, 0, 2, 4, false, 4, true},
		{"below min counts restores", 1, 0, 2, 4, false, 3, true},
		{"restoring counts towards min", 1, 1, 2, 4, false, 0, false},
		{"between min and max idle", 3, 0, 2, 4, false, 0, false},
		{"between min and max filling", 3, 0, 2, 4, true, 1, true},
		{"filling with restores in flight", 1, 2, 2, 4, true, 1, true},
		{"reaching max stops filling", 2, 2, 2, 4, true, 0, false},
		{"above max after adopt", 6, 0, 2, 4, true, 0, false},
		{"min zero never fills", 0, 0, 0, 3, false, 0, false},
		{"min equals max", 1, 0, 3, 3, false, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, filling := planRefill(tt.warm, tt.restoring, tt.minD, tt.maxD, tt.filling)
			if start != tt.wantStart {
				t.Errorf("start = %d, want %d", start, tt.wantStart)
			}
			if filling != tt.wantFilling {
				t.Errorf("filling = %v, want %v", filling, tt.wantFilling)
			}
		})
	}
}

func TestShareRestores(t *testing.T) {
	tests := []struct {
		name  string
		needs []int
		free  int
		first int
		want  []int
	}{
		{"no buckets", nil, 4, 0, []int{}},
		{"no free slots", []int{3, 3}, 0, 0, []int{0, 0}},
		{"enough for all", []int{1, 2}, 5, 0, []int{1, 2}},
		{"one bucket cannot take all", []int{10, 1, 1}, 3, 0, []int{1, 1, 1}},
		{"turns start at first", []int{2, 2}, 1, 1, []int{0, 1}},
		{"first wraps around", []int{2, 2}, 3, 3, []int{1, 2}},
		{"leftover goes to the needy", []int{5, 0, 1}, 4, 0, []int{3, 0, 1}},
		{"negative free", []int{1}, -2, 0, []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shareRestores(tt.needs, tt.free, tt.first)
			if !slices.Equal(got, tt.want) {
				t.Errorf("shareRestores(%v, %d, %d) = %v, want %v", tt.needs, tt.free, tt.first, got, tt.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	const initial, maxDelay = 100 * time.Millisecond, 2 * time.Second
	tests := []struct {
		name     string
		failures int
		jitter   float64
		want     time.Duration
	}{
		{"no failures", 0, 0.5, 0},
		{"first failure low jitter", 1, 0, 50 * time.Millisecond},
		{"first failure high jitter", 1, 0.999999, 99999950 * time.Nanosecond},
		{"third failure doubles twice", 3, 0, 200 * time.Millisecond},
		{"capped at max", 10, 0, time.Second},
		{"capped at max high jitter", 10, 0.5, 1500 * time.Millisecond},
		{"huge failure count does not overflow", 1000, 0, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := backoffDelay(tt.failures, initial, maxDelay, tt.jitter)
			if got != tt.want {
				t.Errorf("backoffDelay(%d, jitter %v) = %v, want %v", tt.failures, tt.jitter, got, tt.want)
			}
		})
	}
}

func TestExpiredIndices(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const maxAge = time.Minute
	tests := []struct {
		name       string
		restoredAt []time.Time
		want       []int
	}{
		{"none warm", nil, nil},
		{"all fresh", []time.Time{now, now.Add(-30 * time.Second)}, nil},
		{"exactly max age expires", []time.Time{now.Add(-maxAge)}, []int{0}},
		{"oldest first expire", []time.Time{now.Add(-2 * maxAge), now.Add(-maxAge - 1), now}, []int{0, 1}},
		{"adopted out of order", []time.Time{now, now.Add(-3 * maxAge), now}, []int{1}},
		{"restored in the future", []time.Time{now.Add(time.Hour)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := expiredIndices(tt.restoredAt, now, maxAge)
			if !slices.Equal(got, tt.want) {
				t.Errorf("expiredIndices = %v, want %v", got, tt.want)
			}
		})
	}
}
