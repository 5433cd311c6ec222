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

	"github.com/warmpool/warmpool/vm"
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
