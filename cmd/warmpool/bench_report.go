package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// benchResult is the output of warmpool bench. Latencies are in
// milliseconds.
type benchResult struct {
	Provider       string  `json:"provider"`
	Accel          string  `json:"accel"`
	Stack          string  `json:"stack"`
	Samples        int     `json:"samples"`
	Depth          int     `json:"depth"`
	ColdP50Ms      float64 `json:"cold_p50_ms"`
	ColdP90Ms      float64 `json:"cold_p90_ms"`
	ColdP99Ms      float64 `json:"cold_p99_ms"`
	WarmP50Ms      float64 `json:"warm_p50_ms"`
	WarmP90Ms      float64 `json:"warm_p90_ms"`
	WarmP99Ms      float64 `json:"warm_p99_ms"`
	RatioP50       float64 `json:"ratio_p50"`
	PSSMiBPerClone float64 `json:"pss_mib_per_clone"`
}

func summarize(provider, accel string, opts benchOptions, cold, warm []time.Duration, pss float64) benchResult {
	r := benchResult{
		Provider:       provider,
		Accel:          accel,
		Stack:          opts.key.String(),
		Samples:        opts.samples,
		Depth:          opts.depth,
		ColdP50Ms:      milliseconds(percentile(cold, 50)),
		ColdP90Ms:      milliseconds(percentile(cold, 90)),
		ColdP99Ms:      milliseconds(percentile(cold, 99)),
		WarmP50Ms:      milliseconds(percentile(warm, 50)),
		WarmP90Ms:      milliseconds(percentile(warm, 90)),
		WarmP99Ms:      milliseconds(percentile(warm, 99)),
		PSSMiBPerClone: pss,
	}
	if r.WarmP50Ms > 0 {
		r.RatioP50 = r.ColdP50Ms / r.WarmP50Ms
	}
	return r
}

// percentile returns the nearest-rank percentile p (0 < p <= 100) of
// samples: the smallest sample that at least p percent of samples do not
// exceed. It returns 0 for no samples.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func milliseconds(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}

func writeJSON(w io.Writer, r benchResult) error {
	return json.NewEncoder(w).Encode(r)
}

func writeTable(w io.Writer, r benchResult) {
	accel := r.Accel
	if accel == "" {
		accel = "-"
	}
	fmt.Fprintf(w, "provider %s, accel %s, stack %s, %d samples per path, pool depth %d\n\n",
		r.Provider, accel, r.Stack, r.Samples, r.Depth)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tp50 ms\tp90 ms\tp99 ms\t")
	fmt.Fprintf(tw, "cold restore\t%.3f\t%.3f\t%.3f\t\n", r.ColdP50Ms, r.ColdP90Ms, r.ColdP99Ms)
	fmt.Fprintf(tw, "warm acquire\t%.4f\t%.4f\t%.4f\t\n", r.WarmP50Ms, r.WarmP90Ms, r.WarmP99Ms)
	tw.Flush()

	fmt.Fprintf(w, "\ncold/warm at p50: %sx\n", formatRatio(r.RatioP50))
	if r.PSSMiBPerClone > 0 {
		fmt.Fprintf(w, "host memory per warm clone (PSS): %.1f MiB\n", r.PSSMiBPerClone)
	}
}

// formatRatio prints ratio with at least three significant digits and no
// exponent, so a ratio below 1 does not round to zero.
func formatRatio(ratio float64) string {
	if ratio >= 100 {
		return strconv.FormatFloat(ratio, 'f', 0, 64)
	}
	return strconv.FormatFloat(ratio, 'g', 3, 64)
}

// plotCDFs draws the empirical CDFs of both paths on a log time axis and
// saves them to file, as SVG or PNG by its extension.
func plotCDFs(file string, r benchResult, cold, warm []time.Duration) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("warmpool bench: %s (%s), %d samples", r.Provider, r.Stack, r.Samples)
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of samples at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	// Both curves reach 1 on the right, so the bottom right corner is
	// free for the legend.
	p.Legend.Top = false
	p.Legend.Left = false
	p.Add(plotter.NewGrid())

	series := []struct {
		name    string
		samples []time.Duration
		color   color.Color
	}{
		{fmt.Sprintf("cold restore (p50 %.1f ms)", r.ColdP50Ms), cold, color.RGBA{R: 200, A: 255}},
		{fmt.Sprintf("warm acquire (p50 %.3f ms)", r.WarmP50Ms), warm, color.RGBA{B: 200, A: 255}},
	}
	for _, s := range series {
		line, err := plotter.NewLine(cdfPoints(s.samples))
		if err != nil {
			return err
		}
		line.StepStyle = plotter.PostStep
		line.Color = s.color
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(s.name, line)
	}
	return p.Save(7*vg.Inch, 4*vg.Inch, file)
}

// cdfPoints returns the empirical CDF of samples in milliseconds, starting
// with a point at 0 below the smallest sample so that a single sample
// still draws a step. A log axis cannot show zero, so zero durations
// become one nanosecond.
func cdfPoints(samples []time.Duration) plotter.XYs {
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	points := make(plotter.XYs, 0, len(sorted)+1)
	if len(sorted) > 0 {
		points = append(points, plotter.XY{X: milliseconds(max(sorted[0], time.Nanosecond)), Y: 0})
	}
	for i, d := range sorted {
		points = append(points, plotter.XY{
			X: milliseconds(max(d, time.Nanosecond)),
			Y: float64(i+1) / float64(len(sorted)),
		})
	}
	return points
}
