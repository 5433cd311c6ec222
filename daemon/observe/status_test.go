package observe

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// hostileError is an error text that would run a script if the page did not
// escape it.
const hostileError = `restore: <script>alert("x")</script> & more`

func sampleStats(now time.Time) pool.Stats {
	return pool.Stats{
		Hits:           3,
		Misses:         1,
		AgeEvictions:   1,
		RestoresOK:     9,
		RestoresFailed: 2,
		Buckets: []pool.BucketStats{
			{
				Key:        nodeKey,
				Snapshot:   vm.Snapshot{ID: "node-22-base", Provider: "sim"},
				Warm:       1,
				Restoring:  0,
				MinDepth:   2,
				MaxDepth:   4,
				Misses:     1,
				RestoresOK: 3, RestoresFailed: 2,
				LastError:   hostileError,
				LastErrorAt: now.Add(-5 * time.Second),
				RetryAt:     now.Add(3 * time.Second),
			},
			{
				Key:        pythonKey,
				Snapshot:   vm.Snapshot{ID: "python-312-base", Provider: "sim"},
				Warm:       3,
				Restoring:  1,
				MinDepth:   2,
				MaxDepth:   5,
				Hits:       3,
				Evictions:  1,
				RestoresOK: 6,
			},
		},
	}
}

func serve(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, target, nil))
	return w
}

func TestStatusJSONHandlerFields(t *testing.T) {
	rec, _, clock := newTestRecorder(t)
	rec.PoolHooks().Evicted(vm.Instance{ID: "python-7", Stack: pythonKey}, pool.EvictAge, nil)
	clock.Advance(90 * time.Second)
	stats := func() pool.Stats { return sampleStats(clock.Now()) }

	w := serve(t, rec.StatusJSONHandler(stats), http.MethodGet, "/status.json")
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200: %s", w.Code, w.Body)
	}
	if got := w.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}

	var got statusView
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("decode %s: %v", w.Body, err)
	}
	if got.Totals.HitRate != "75.0%" {
		t.Errorf("total hit rate = %q, want 75.0%%", got.Totals.HitRate)
	}
	if got.Totals.WarmVMs != 4 || got.Totals.RestoringVMs != 1 {
		t.Errorf("totals warm/restoring = %d/%d, want 4/1", got.Totals.WarmVMs, got.Totals.RestoringVMs)
	}
	if len(got.Buckets) != 2 {
		t.Fatalf("buckets = %d, want 2", len(got.Buckets))
	}

	node := got.Buckets[0]
	if node.Stack != "node@22/1cpu/256MiB" {
		t.Errorf("first bucket = %q, want node@22/1cpu/256MiB", node.Stack)
	}
	if !node.BelowMin {
		t.Error("node bucket with 1 warm of min 2 is not marked below min")
	}
	if node.HitRate != "0.0%" {
		t.Errorf("node hit rate = %q, want 0.0%%", node.HitRate)
	}
	if want := hostileError + " (5s ago), retry in 3s"; node.LastError != want {
		t.Errorf("node last error = %q, want %q", node.LastError, want)
	}

	python := got.Buckets[1]
	if python.BelowMin {
		t.Error("python bucket with 3 warm and 1 restoring of min 2 is marked below min")
	}
	if python.Warm != 3 || python.Restoring != 1 || python.MinDepth != 2 || python.MaxDepth != 5 {
		t.Errorf("python depth = %+v, want warm 3, restoring 1, min 2, max 5", python)
	}

	if len(got.Events) != 1 {
		t.Fatalf("events = %d, want 1", len(got.Events))
	}
	event := got.Events[0]
	if event.Time != "2026-03-01 12:00:00 UTC" {
		t.Errorf("event time = %q, want the time of the eviction", event.Time)
	}
	if event.Age != "1m30s ago" {
		t.Errorf("event age = %q, want 1m30s ago", event.Age)
	}
	if event.Kind != "evicted" || event.Reason != "age" || event.VMID != "python-7" {
		t.Errorf("event = %+v, want an age eviction of python-7", event)
	}
}

func TestStatusHandlerEscapesValues(t *testing.T) {
	rec, _, clock := newTestRecorder(t)
	rec.PoolHooks().Evicted(vm.Instance{ID: "node-1", Stack: nodeKey}, pool.EvictUnhealthy, errors.New(hostileError))
	stats := func() pool.Stats { return sampleStats(clock.Now()) }

	w := serve(t, rec.StatusHandler(stats), http.MethodGet, "/")
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200: %s", w.Code, w.Body)
	}
	body := w.Body.String()
	if strings.Contains(body, `<script>alert`) {
		t.Error("page contains the error's <script> tag unescaped")
	}
	if got := strings.Count(body, `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more`); got != 2 {
		t.Errorf("escaped error text appears %d times, want 2 (bucket row and event row)", got)
	}
	for _, want := range []string{
		`<tr data-stack="python@3.12/2cpu/512MiB">`,
		`<td class="num warm">3</td>`,
		`<td class="num target">2–5</td>`,
		`<td class="num hit-rate">100.0%</td>`,
		`<tr data-stack="node@22/1cpu/256MiB" class="below-min">`,
		`<meter min="0" max="4" low="2" optimum="4" value="1"></meter>`,
		`<span class="value" id="total-hit-rate">75.0%</span>`,
		`<td class="reason">unhealthy</td>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

func TestStatusHandlerPolicyAllowsInlineAssets(t *testing.T) {
	rec, _, _ := newTestRecorder(t)
	w := serve(t, rec.StatusHandler(func() pool.Stats { return pool.Stats{} }), http.MethodGet, "/")
	body := w.Body.String()
	policy := w.Header().Get("Content-Security-Policy")

	for _, element := range []string{"script", "style"} {
		match := regexp.MustCompile(`(?s)<` + element + `>(.*?)</` + element + `>`).FindStringSubmatch(body)
		if match == nil {
			t.Fatalf("page has no <%s> element", element)
		}
		if want := element + "-src " + sourceHash([]byte(match[1])); !strings.Contains(policy, want) {
			t.Errorf("policy %q lacks %q, so the browser would block the page's %s", policy, want, element)
		}
	}
	if !strings.Contains(policy, "default-src 'none'") {
		t.Errorf("policy %q does not default to 'none'", policy)
	}
	if !strings.Contains(body, "No stacks registered.") {
		t.Error("page with no buckets lacks the empty-table message")
	}
}

func TestStatusHandlersRejectBadRequests(t *testing.T) {
	rec, _, _ := newTestRecorder(t)
	stats := func() pool.Stats { return pool.Stats{} }
	routes := rec.StatusRoutes(stats)

	cases := []struct {
		name    string
		handler http.Handler
		method  string
		target  string
		want    int
	}{
		{"page POST", rec.StatusHandler(stats), http.MethodPost, "/", http.StatusMethodNotAllowed},
		{"page other path", rec.StatusHandler(stats), http.MethodGet, "/favicon.ico", http.StatusNotFound},
		{"JSON DELETE", rec.StatusJSONHandler(stats), http.MethodDelete, "/status.json", http.StatusMethodNotAllowed},
		{"page HEAD", rec.StatusHandler(stats), http.MethodHead, "/", http.StatusOK},
		{"routes page", routes, http.MethodGet, "/", http.StatusOK},
		{"routes JSON", routes, http.MethodGet, "/status.json", http.StatusOK},
		{"routes other path", routes, http.MethodGet, "/metrics", http.StatusNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(t, tc.handler, tc.method, tc.target)
			if w.Code != tc.want {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.target, w.Code, tc.want)
			}
			if w.Code == http.StatusMethodNotAllowed && w.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow = %q, want \"GET, HEAD\"", w.Header().Get("Allow"))
			}
		})
	}
}

func TestFormatHitRate(t *testing.T) {
	cases := []struct {
		name         string
		hits, misses uint64
		want         string
	}{
		{"no acquires", 0, 0, "-"},
		{"all hits", 4, 0, "100.0%"},
		{"all misses", 0, 4, "0.0%"},
		{"two thirds", 2, 1, "66.7%"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatHitRate(tc.hits, tc.misses); got != tc.want {
				t.Errorf("formatHitRate(%d, %d) = %q, want %q", tc.hits, tc.misses, got, tc.want)
			}
		})
	}
}

func TestFormatAge(t *testing.T) {
	cases := []struct {
		age  time.Duration
		want string
	}{
		{0, "just now"},
		{999 * time.Millisecond, "just now"},
		{1500 * time.Millisecond, "2s ago"},
		{95 * time.Minute, "1h35m0s ago"},
	}
	for _, tc := range cases {
		if got := formatAge(tc.age); got != tc.want {
			t.Errorf("formatAge(%v) = %q, want %q", tc.age, got, tc.want)
		}
	}
}

func TestStatusTotalsMatchRows(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	stats := sampleStats(now)
	// Pool-wide counters keep the counts of a stack that was unregistered
	// and registered again, while its row starts over.
	stats.Hits += 40
	stats.Misses += 7
	stats.AgeEvictions += 5
	stats.RestoresOK += 30
	stats.RestoresFailed += 4

	view := buildStatusView(stats, nil, now, -1)
	var hits, misses, evictions, restoresOK, restoresFailed uint64
	for _, b := range view.Buckets {
		hits += b.Hits
		misses += b.Misses
		evictions += b.Evictions
		restoresOK += b.RestoresOK
		restoresFailed += b.RestoresFailed
	}
	if view.Totals.Hits != hits {
		t.Errorf("total hits = %d, rows add up to %d", view.Totals.Hits, hits)
	}
	if view.Totals.Misses != misses {
		t.Errorf("total misses = %d, rows add up to %d", view.Totals.Misses, misses)
	}
	if view.Totals.Evictions != evictions {
		t.Errorf("total evictions = %d, rows add up to %d", view.Totals.Evictions, evictions)
	}
	if view.Totals.RestoresOK != restoresOK {
		t.Errorf("total restores = %d, rows add up to %d", view.Totals.RestoresOK, restoresOK)
	}
	if view.Totals.RestoresFailed != restoresFailed {
		t.Errorf("total restore failures = %d, rows add up to %d", view.Totals.RestoresFailed, restoresFailed)
	}
	if view.Totals.HitRate != formatHitRate(hits, misses) {
		t.Errorf("total hit rate = %q, want %q", view.Totals.HitRate, formatHitRate(hits, misses))
	}
}

func TestStatusShowsHandedOutVMs(t *testing.T) {
	rec, _, clock := newTestRecorder(t)
	stats := func() pool.Stats { return sampleStats(clock.Now()) }

	w := serve(t, rec.StatusJSONHandler(stats), http.MethodGet, "/status.json")
	if strings.Contains(w.Body.String(), `"handed_out_vms"`) {
		t.Errorf("status JSON has handed_out_vms without a count set: %s", w.Body)
	}

	rec.SetHandedOutCount(func() int { return 7 })
	w = serve(t, rec.StatusJSONHandler(stats), http.MethodGet, "/status.json")
	var got statusView
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("decode %s: %v", w.Body, err)
	}
	if got.Totals.HandedOutVMs == nil || *got.Totals.HandedOutVMs != 7 {
		t.Errorf("handed_out_vms = %v, want 7", got.Totals.HandedOutVMs)
	}

	page := serve(t, rec.StatusHandler(stats), http.MethodGet, "/").Body.String()
	if !strings.Contains(page, `id="total-handed-out">7<`) {
		t.Errorf("status page does not show 7 handed-out VMs")
	}
}
