package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"context"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
	"io"
	"runtime"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentileNearestRank(t *testing.T) {
	ten := []time.Duration{ms(10), ms(1), ms(9), ms(2), ms(8), ms(3), ms(7), ms(4), ms(6), ms(5)}
	cases := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", []time.Duration{ms(7)}, 99, ms(7)},
		{"p50 of ten", ten, 50, ms(5)},
		{"p90 of ten", ten, 90, ms(9)},
		{"p99 of ten", ten, 99, ms(10)},
		{"p100 of ten", ten, 100, ms(10)},
		{"tiny p", ten, 0.1, ms(1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.samples, tc.p); got != tc.want {
				t.Errorf("percentile(%v) = %s, want %s", tc.p, got, tc.want)
			}
		})
	}
	if ten[0] != ms(10) {
		t.Errorf("percentile reordered its input")
	}
}

func TestSummarizeJSONFields(t *testing.T) {
	opts := benchOptions{key: vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128}, samples: 2, depth: 1}
	r := summarize("sim", "", opts, []time.Duration{ms(100), ms(200)}, []time.Duration{ms(1), ms(2)}, 12.5)
	if r.RatioP50 != 100 {
		t.Errorf("ratio_p50 = %v, want 100", r.RatioP50)
	}

	var buf bytes.Buffer
	if err := writeJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(buf.Bytes(), &fields); err != nil {
		t.Fatalf("output is not one JSON object: %v", err)
	}
	for _, name := range []string{"provider", "accel", "samples", "cold_p50_ms", "cold_p90_ms", "cold_p99_ms",
		"warm_p50_ms", "warm_p90_ms", "warm_p99_ms", "ratio_p50", "pss_mib_per_clone"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("JSON lacks %s: %s", name, buf.String())
		}
	}
}

func TestBenchOptionsValidate(t *testing.T) {
	valid := func() benchOptions {
		return benchOptions{
			key:      vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128},
			samples:  1,
			depth:    1,
			provider: providerOptions{cacheDir: t.TempDir()},
		}
	}
	cases := []struct {
		name   string
		change func(*benchOptions)
		want   string
	}{
		{"zero samples", func(o *benchOptions) { o.samples = 0 }, "--samples"},
		{"zero depth", func(o *benchOptions) { o.depth = 0 }, "--depth"},
		{"plot extension", func(o *benchOptions) { o.plot = "out.pdf" }, "--plot"},
		{"bad key", func(o *benchOptions) { o.key.MemoryMiB = 1 }, "memory_mib"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			tc.change(&o)
			err := o.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
	o := valid()
	if err := o.validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

func TestPlotCDFsWritesFile(t *testing.T) {
	r := benchResult{Provider: "sim", Stack: "b@1/1cpu/128MiB", Samples: 3, ColdP50Ms: 100, WarmP50Ms: 0.01}
	cold := []time.Duration{ms(90), ms(100), ms(120)}
	warm := []time.Duration{0, 10 * time.Microsecond, 20 * time.Microsecond}
	for _, name := range []string{"cdf.svg", "cdf.png"} {
		file := filepath.Join(t.TempDir(), name)
		if err := plotCDFs(file, r, cold, warm); err != nil {
			t.Fatalf("plotCDFs %s: %v", name, err)
		}
		info, err := os.Stat(file)
		if err != nil {
			t.Fatalf("stat %s: %v", name, err)
		}
		if info.Size() == 0 {
			t.Errorf("%s is empty", name)
		}
	}
}

func TestBenchSimProvider(t *testing.T) {
	opts := benchOptions{
		key:      vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128},
		samples:  5,
		depth:    2,
		json:     true,
		provider: providerOptions{name: "sim", cacheDir: t.TempDir(), simRestore: 5 * time.Millisecond},
	}
	var out bytes.Buffer
	if err := runBench(t.Context(), opts, discardLogger(), &out); err != nil {
		t.Fatalf("runBench: %v", err)
	}
	var r benchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if r.Provider != "sim" {
		t.Errorf("provider = %q, want sim", r.Provider)
	}
	if r.ColdP50Ms < 5 {
		t.Errorf("cold_p50_ms = %v, want at least the simulated 5ms restore", r.ColdP50Ms)
	}
	if r.WarmP50Ms <= 0 {
		t.Errorf("warm_p50_ms = %v, want > 0", r.WarmP50Ms)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestFormatRatioKeepsSmallValues(t *testing.T) {
	cases := map[float64]string{0.25: "0.25", 0.001234: "0.00123", 1.5: "1.5", 12.34: "12.3", 1234.5: "1234", 0: "0"}
	for ratio, want := range cases {
		if got := formatRatio(ratio); got != want {
			t.Errorf("formatRatio(%v) = %q, want %q", ratio, got, want)
		}
	}
}

func TestCDFPointsSingleSample(t *testing.T) {
	points := cdfPoints([]time.Duration{ms(5)})
	if len(points) != 2 {
		t.Fatalf("cdfPoints of one sample has %d points, want 2 to draw a step", len(points))
	}
	if points[0].Y != 0 || points[1].Y != 1 {
		t.Errorf("cdfPoints = %v, want a step from 0 to 1", points)
	}
}

func TestBenchRejectsBadPlotPathEarly(t *testing.T) {
	sim := vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128}
	opts := benchOptions{
		key: sim, samples: 1, depth: 1,
		plot:     filepath.Join(t.TempDir(), "missing-dir", "cdf.png"),
		provider: providerOptions{name: "sim", cacheDir: t.TempDir(), simRestore: time.Hour},
	}
	// A restore of an hour would time the test out if the run started.
	err := runBench(t.Context(), opts, discardLogger(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "invalid --plot") {
		t.Errorf("runBench = %v, want an invalid --plot error before the run", err)
	}
}

func TestBenchOptionsDepthBounds(t *testing.T) {
	o := benchOptions{key: vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128},
		samples: 1, depth: maxBenchDepth + 1, provider: providerOptions{cacheDir: t.TempDir()}}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "--depth") {
		t.Errorf("validate with depth %d = %v, want a --depth error", o.depth, err)
	}
	o.depth = 40
	if err := o.validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if want := min(40, runtime.NumCPU()); o.restoreConcurrency != want {
		t.Errorf("default restore concurrency = %d, want %d", o.restoreConcurrency, want)
	}
}

// TestBenchCancelLeavesNoVM cancels a bench while the pool's restores are
// still running and checks that none of them outlives runBench.
func TestBenchCancelLeavesNoVM(t *testing.T) {
	p, err := sim.New(sim.Config{RestoreLatency: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	setup := &providerSetup{provider: p, close: func() {}}
	key := vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128}
	opts := benchOptions{key: key, samples: 1, depth: 8, restoreConcurrency: 8}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()

	if _, _, err := measureWarm(ctx, setup, opts, vm.Snapshot{ID: "s", Provider: "sim", Path: "/s"}); err == nil {
		t.Fatal("measureWarm returned nil after its context ended")
	}
	restored := len(p.Restored())
	if waiting := p.Waiting(); waiting != 0 {
		t.Errorf("%d restores still running after measureWarm returned", waiting)
	}
	if live := p.Live(); len(live) != 0 {
		t.Errorf("VMs left after measureWarm returned: %v", live)
	}
	time.Sleep(400 * time.Millisecond)
	if later := len(p.Restored()); later != restored {
		t.Errorf("%d restores finished after measureWarm returned", later-restored)
	}
}

func TestSimTemplateCreatesSnapshot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "snap")
	key := vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128}
	if _, _, err := createSimSnapshot(t.Context(), key, dir); err != nil {
		t.Fatalf("createSimSnapshot: %v", err)
	}
	if _, _, err := loadSimSnapshot(dir); err != nil {
		t.Errorf("loadSimSnapshot of a created snapshot: %v", err)
	}
	corrupt := t.TempDir()
	if err := os.WriteFile(filepath.Join(corrupt, simSnapshotFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadSimSnapshot(corrupt); err == nil || !strings.Contains(err.Error(), "invalid") {
		t.Errorf("loadSimSnapshot of a corrupt snapshot = %v, want an invalid error", err)
	}
}

// TestCreateSnapshotConcurrent runs two creations of one snapshot at once
// and checks that both succeed with the same snapshot.
func TestCreateSnapshotConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "templates", "snap")
	key := vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 128}
	setup := &providerSetup{createSnapshot: createSimSnapshot, loadSnapshot: loadSimSnapshot}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, _, err := createSnapshotLocked(t.Context(), setup, key, dir, true)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("createSnapshotLocked: %v", err)
		}
	}
}
