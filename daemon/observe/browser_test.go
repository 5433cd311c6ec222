package observe

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/chromedp/chromedp"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// screenshotEnv names a file to which the browser test writes a PNG of the
// page after its refresh, for a person to look at.
const screenshotEnv = "WARMPOOL_STATUS_SCREENSHOT"

// findChromium returns the path of a Chromium binary, or "" if there is none.
func findChromium() string {
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	return ""
}

// newBrowser starts a headless Chromium that reaches nothing but the test
// server, and returns a chromedp context for one tab.
func newBrowser(t *testing.T, chromium string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 900),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelTab)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx
}

// rejectOnce is a pool validator that fails the first VM it checks after
// arm is called, so a test can cause one eviction on demand.
type rejectOnce struct {
	mu       sync.Mutex // guards armed and rejected
	armed    bool
	rejected string
}

func (r *rejectOnce) arm() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = true
}

// rejectedID returns the id of the VM it failed, or "" if none.
func (r *rejectOnce) rejectedID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rejected
}

func (r *rejectOnce) Validate(inst vm.Instance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.armed {
		return nil
	}
	r.armed = false
	r.rejected = inst.ID
	return errors.New("guest heartbeat missed")
}

// waitForPool waits until every bucket of p is at its max depth with no
// restore in flight.
func waitForPool(t *testing.T, p simPool) pool.Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stats := p.Stats()
		full := len(stats.Buckets) > 0
		for _, b := range stats.Buckets {
			if b.Warm != b.MaxDepth || b.Restoring != 0 {
				full = false
			}
		}
		if full {
			return stats
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not fill within 10s: %+v", stats.Buckets)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cellText returns the text of the cell of class column in the row of stack.
func cellText(ctx context.Context, t *testing.T, stack vm.StackKey, column string) string {
	t.Helper()
	return pageText(ctx, t, fmt.Sprintf(`#buckets tr[data-stack=%q] td.%s`, stack.String(), column))
}

// pageText returns the visible text of the first element that matches the
// CSS selector.
func pageText(ctx context.Context, t *testing.T, selector string) string {
	t.Helper()
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(selector)))
	if err != nil {
		t.Fatalf("read %s: %v", selector, err)
	}
	return text
}

func TestStatusPageInBrowser(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		testenv.Skipf(t, "no Chromium binary found (looked for /usr/bin/chromium, chromium, chromium-browser); install Debian's chromium package to run this test")
	}

	rec := New(prometheus.NewRegistry(), clockwork.NewRealClock())
	validator := &rejectOnce{}
	p := newSimPool(t, rec, validator)
	for _, key := range []vm.StackKey{pythonKey, nodeKey} {
		snap := vm.Snapshot{ID: key.Name + "-base", Provider: "sim", Path: "/snapshots/" + key.Name}
		if err := p.Register(key, snap, pool.WithDepth(2, 3)); err != nil {
			t.Fatalf("register %s: %v", key, err)
		}
	}
	before := waitForPool(t, p)

	server := httptest.NewServer(rec.StatusRoutes(p.Stats))
	t.Cleanup(server.Close)
	ctx := newBrowser(t, chromium)

	// The first load shows the server-rendered snapshot.
	err := chromedp.Do(ctx,
		chromedp.Navigate(server.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#buckets tbody tr[data-stack]`)),
	)
	if err != nil {
		t.Fatalf("load status page: %v", err)
	}
	if got := pageText(ctx, t, "#refresh-state"); got != "Refreshing every 1s." {
		t.Errorf("refresh state = %q, want the script to have started polling", got)
	}
	firstGeneratedAt := pageText(ctx, t, "#generated-at")
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#buckets tbody tr[data-stack]").length`))
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	if rows != 2 {
		t.Errorf("bucket rows = %d, want 2", rows)
	}
	for _, b := range before.Buckets {
		if got, want := cellText(ctx, t, b.Key, "warm"), strconv.Itoa(b.Warm); got != want {
			t.Errorf("%s warm = %q, want %s", b.Key, got, want)
		}
		if got := cellText(ctx, t, b.Key, "target"); got != "2–3" {
			t.Errorf("%s target = %q, want 2–3", b.Key, got)
		}
		if got := cellText(ctx, t, b.Key, "hits"); got != "0" {
			t.Errorf("%s hits = %q, want 0", b.Key, got)
		}
		if got := cellText(ctx, t, b.Key, "hit-rate"); got != "-" {
			t.Errorf("%s hit rate = %q, want - before any acquire", b.Key, got)
		}
	}

	// Two acquires hit. The validator then rejects the python bucket's
	// next VM, so the third acquire evicts it as unhealthy and hits on the
	// VM after it.
	for range 2 {
		p.acquireAndDestroy(t, pythonKey)
	}
	waitForPool(t, p)
	validator.arm()
	p.acquireAndDestroy(t, pythonKey)
	rejected := validator.rejectedID()
	if rejected == "" {
		t.Fatal("the validator rejected no VM")
	}
	after := p.Stats()
	python := bucketStats(t, after, pythonKey)
	if python.Hits != 3 || python.Evictions != 1 {
		t.Fatalf("python hits/evictions = %d/%d, want 3/1", python.Hits, python.Evictions)
	}

	// Wait for the page to poll, then read what it shows.
	wantHits := strconv.FormatUint(python.Hits, 10)
	selector := fmt.Sprintf(`#buckets tr[data-stack=%q] td.hits`, pythonKey.String())
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](
		fmt.Sprintf(`document.querySelector(%q)?.textContent === %q`, selector, wantHits),
		chromedp.WithPollingTimeout(10*time.Second)))
	if err != nil {
		t.Fatalf("page did not show %s python hits after refresh: %v", wantHits, err)
	}
	if got := cellText(ctx, t, pythonKey, "evictions"); got != "1" {
		t.Errorf("python evictions = %q, want 1", got)
	}
	if got := cellText(ctx, t, pythonKey, "hit-rate"); got != "100.0%" {
		t.Errorf("python hit rate = %q, want 100.0%%", got)
	}
	if got := cellText(ctx, t, nodeKey, "hits"); got != "0" {
		t.Errorf("node hits = %q, want 0", got)
	}

	if got := pageText(ctx, t, "#generated-at"); got == firstGeneratedAt {
		t.Errorf("data time is still %q after a refresh", got)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#events tr[data-kind="evicted"]`))); err != nil {
		t.Fatalf("wait for eviction row: %v", err)
	}
	eventKind := pageText(ctx, t, `#events tr[data-kind="evicted"] td.kind`)
	eventVM := pageText(ctx, t, `#events tr[data-kind="evicted"] td.vm-id`)
	eventReason := pageText(ctx, t, `#events tr[data-kind="evicted"] td.reason`)
	eventError := pageText(ctx, t, `#events tr[data-kind="evicted"] td.error`)
	if eventKind != "evicted" {
		t.Errorf("event kind = %q, want evicted", eventKind)
	}
	if eventVM != rejected {
		t.Errorf("evicted VM = %q, want %s", eventVM, rejected)
	}
	if eventReason != "unhealthy" {
		t.Errorf("eviction reason = %q, want unhealthy", eventReason)
	}
	if eventError == "" {
		t.Error("eviction row shows no error, want the validator's error")
	}
	if totalHits := pageText(ctx, t, "#total-hits"); totalHits != strconv.FormatUint(after.Hits, 10) {
		t.Errorf("total hits = %q, want %d", totalHits, after.Hits)
	}

	saveScreenshot(ctx, t)
}

// saveScreenshot writes a PNG of the page to the file named by screenshotEnv,
// if it is set.
func saveScreenshot(ctx context.Context, t *testing.T) {
	t.Helper()
	path := os.Getenv(screenshotEnv)
	if path == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	t.Logf("screenshot written to %s", path)
}

func bucketStats(t *testing.T, stats pool.Stats, key vm.StackKey) pool.BucketStats {
	t.Helper()
	for _, b := range stats.Buckets {
		if b.Key == key {
			return b
		}
	}
	t.Fatalf("no bucket %s in stats", key)
	return pool.BucketStats{}
}

func TestStatusPageFitsNarrowWindow(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		testenv.Skipf(t, "no Chromium binary found (looked for /usr/bin/chromium, chromium, chromium-browser); install Debian's chromium package to run this test")
	}
	rec := New(prometheus.NewRegistry(), clockwork.NewRealClock())
	rec.SetHandedOutCount(func() int { return 12 })
	stats := func() pool.Stats {
		s := sampleStats(time.Now())
		s.Buckets[0].LastError = "restore: snapshot load: open /var/lib/warmpool/templates/node-22-2cpu-512mib/memory: no such file or directory"
		return s
	}
	server := httptest.NewServer(rec.StatusRoutes(stats))
	t.Cleanup(server.Close)
	ctx := newBrowser(t, chromium)

	err := chromedp.Do(ctx,
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(server.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#buckets tbody tr[data-stack]`)),
	)
	if err != nil {
		t.Fatalf("load status page: %v", err)
	}
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[float64](
		`document.documentElement.scrollWidth - window.innerWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow > 0 {
		t.Errorf("page is %vpx wider than a 1280px window", overflow)
	}
	lastErrorOverflow, err := chromedp.Run(ctx, chromedp.Evaluate[float64](
		`document.querySelector("#buckets td.last-error").getBoundingClientRect().right - window.innerWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if lastErrorOverflow > 0 {
		t.Errorf("Last error column ends %vpx past the window's right edge", lastErrorOverflow)
	}
	if got := pageText(ctx, t, "#total-handed-out"); got != "12" {
		t.Errorf("handed-out total = %q, want 12", got)
	}
}
