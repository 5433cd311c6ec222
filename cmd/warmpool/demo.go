package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

func init() {
	rootCmd.AddCommand(newDemoCmd())
}

type demoOptions struct {
	depth          int
	acquires       int
	restoreLatency time.Duration
	seed           uint64
}

func newDemoCmd() *cobra.Command {
	opts := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show the warm pool at work on simulated VMs",
		Long: "demo runs a warm pool on the in-memory sim provider, which starts no VMM. " +
			"It registers two stacks, waits until both are filled, acquires VMs " +
			"(including one miss and one eviction of a dead VM on purpose), prints " +
			"what happened and the pool's metrics, and closes the pool.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			return runDemo(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	cmd.Flags().IntVar(&opts.depth, "depth", 3, "warm VMs kept per stack (max depth, 1-64)")
	cmd.Flags().IntVar(&opts.acquires, "acquires", 3, "VMs acquired from the first stack (1-1000)")
	cmd.Flags().DurationVar(&opts.restoreLatency, "restore-latency", 50*time.Millisecond,
		"simulated time of one snapshot restore")
	cmd.Flags().Uint64Var(&opts.seed, "seed", 1, "seed of the simulated latency jitter")
	return cmd
}

func (o demoOptions) validate() error {
	if o.depth < 1 || o.depth > 64 {
		return fmt.Errorf("invalid --depth %d: must be 1-64", o.depth)
	}
	if o.acquires < 1 || o.acquires > 1000 {
		return fmt.Errorf("invalid --acquires %d: must be 1-1000", o.acquires)
	}
	if o.restoreLatency < 0 || o.restoreLatency > 10*time.Second {
		return fmt.Errorf("invalid --restore-latency %v: must be 0-10s", o.restoreLatency)
	}
	return nil
}

// demoLog prints pool events with the time since the demo started, and
// keeps the order in which VMs turned warm.
type demoLog struct {
	out   io.Writer
	start time.Time

	mu       sync.Mutex // guards restored and serializes writes to out
	restored map[vm.StackKey][]string
}

func (l *demoLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.printfLocked(format, args...)
}

func (l *demoLog) printfLocked(format string, args ...any) {
	elapsed := time.Since(l.start).Truncate(time.Millisecond)
	fmt.Fprintf(l.out, "%8v  %s\n", elapsed, fmt.Sprintf(format, args...))
}

func (l *demoLog) hooks() pool.Hooks {
	return pool.Hooks{
		Restored: func(inst vm.Instance, took time.Duration) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.restored[inst.Stack] = append(l.restored[inst.Stack], inst.ID)
			l.printfLocked("restored %s for %s in %v", inst.ID, inst.Stack, took.Truncate(time.Millisecond))
		},
		RestoreFailed: func(id string, key vm.StackKey, err error, _, retryIn time.Duration) {
			if errors.Is(err, context.Canceled) {
				l.printf("restore of %s for %s cancelled by Close", id, key)
				return
			}
			l.printf("restore of %s for %s failed, retry in %v: %v", id, key, retryIn, err)
		},
		Evicted: func(inst vm.Instance, reason pool.EvictReason, cause error) {
			if cause != nil {
				l.printf("evicted %s (%s): %v", inst.ID, reason, cause)
				return
			}
			l.printf("evicted %s (%s)", inst.ID, reason)
		},
	}
}

func (l *demoLog) firstRestored(key vm.StackKey) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ids := l.restored[key]; len(ids) > 0 {
		return ids[0]
	}
	return ""
}

func runDemo(ctx context.Context, opts demoOptions, out io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	provider, err := sim.New(sim.Config{
		RestoreLatency: opts.restoreLatency,
		RestoreJitter:  opts.restoreLatency / 2,
		DestroyLatency: opts.restoreLatency / 10,
		Seed:           opts.seed,
	})
	if err != nil {
		return err
	}
	log := &demoLog{out: out, start: time.Now(), restored: map[vm.StackKey][]string{}}
	cfg := pool.DefaultConfig()
	cfg.MinDepth, cfg.MaxDepth = max(1, opts.depth/2), opts.depth
	cfg.Hooks = log.hooks()
	p, err := pool.New(provider, cfg)
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = p.Close(context.Background())
		}
	}()

	python := vm.StackKey{Name: "python", Version: "3.13", VCPUs: 1, MemoryMiB: 256}
	node := vm.StackKey{Name: "node", Version: "22", VCPUs: 2, MemoryMiB: 512}
	for _, key := range []vm.StackKey{python, node} {
		snap := vm.Snapshot{ID: key.Name + "-" + key.Version, Provider: provider.Name()}
		if err := p.Register(key, snap); err != nil {
			return err
		}
		log.printf("registered %s, depth %d..%d", key, cfg.MinDepth, cfg.MaxDepth)
	}
	if err := demoWaitFull(ctx, p, 10*time.Second+20*opts.restoreLatency); err != nil {
		return err
	}
	log.printf("both stacks have %d warm VMs", opts.depth)

	handedOut, err := demoAcquire(ctx, p, provider, log, opts, python, node)
	// The demo owns the VMs it acquired and destroys them before it closes
	// the pool.
	for _, inst := range handedOut {
		if derr := provider.Destroy(ctx, inst); derr != nil {
			err = errors.Join(err, fmt.Errorf("destroy acquired VM %s: %w", inst.ID, derr))
		}
	}
	if err != nil {
		return err
	}

	// Hooks keep printing while the refill runs, so the metrics block is
	// written under the log's lock to keep it whole and race-free.
	metrics, err := formatDemoMetrics(p)
	if err != nil {
		return err
	}
	log.mu.Lock()
	fmt.Fprintf(out, "\nMetrics:\n%s\n", metrics)
	log.mu.Unlock()

	closed = true
	if err := p.Close(ctx); err != nil {
		return fmt.Errorf("close pool: %w", err)
	}
	log.printf("pool closed; %d VMs still running in the provider", len(provider.Live()))
	return nil
}

// demoAcquire acquires opts.acquires VMs from first after killing its
// oldest warm VM, then drains second until it misses. It returns every VM
// it acquired.
func demoAcquire(ctx context.Context, p *pool.Pool, provider *sim.Provider, log *demoLog,
	opts demoOptions, first, second vm.StackKey) ([]vm.Instance, error) {
	var handedOut []vm.Instance

	// The oldest warm VM is the first to be acquired, so killing it makes
	// the next acquire evict it and hand out the VM behind it.
	if victim := log.firstRestored(first); victim != "" {
		provider.Kill(victim)
		log.printf("killed %s, as if its VMM had crashed", victim)
	}
	for range opts.acquires {
		start := time.Now()
		h, err := p.Acquire(ctx, first)
		if errors.Is(err, pool.ErrEmpty) {
			log.printf("acquire %s: empty, the refill is still running", first)
			continue
		}
		if err != nil {
			return handedOut, err
		}
		handedOut = append(handedOut, h.Instance)
		log.printf("acquired %s from %s in %v", h.ID, first, time.Since(start))
	}

	// Taking every warm VM of the second stack without waiting ends in a
	// miss, because a restore takes longer than an acquire.
	for range opts.depth + 1 {
		h, err := p.Acquire(ctx, second)
		if errors.Is(err, pool.ErrEmpty) {
			log.printf("acquire %s: miss (%v); the refiller was woken", second, err)
			break
		}
		if err != nil {
			return handedOut, err
		}
		handedOut = append(handedOut, h.Instance)
		log.printf("acquired %s from %s", h.ID, second)
	}

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := p.AcquireWait(wctx, second)
	if err != nil {
		return handedOut, fmt.Errorf("wait for a refill of %s: %w", second, err)
	}
	handedOut = append(handedOut, h.Instance)
	log.printf("AcquireWait got %s from %s once the refill landed", h.ID, second)
	return handedOut, nil
}

// demoWaitFull polls the pool's stats until every bucket contains MaxDepth
// warm VMs, or fails after timeout.
func demoWaitFull(ctx context.Context, p *pool.Pool, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		full := true
		for _, b := range p.Stats().Buckets {
			full = full && b.Warm >= b.MaxDepth
		}
		if full {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("timed out after %v waiting for the pool to fill", timeout)
		case <-tick.C:
		}
	}
}

// formatDemoMetrics returns the pool's Prometheus metrics, one series a
// line, leaving out series that are zero.
func formatDemoMetrics(p *pool.Pool) (string, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(pool.NewCollector(p)); err != nil {
		return "", fmt.Errorf("register pool collector: %w", err)
	}
	families, err := reg.Gather()
	if err != nil {
		return "", fmt.Errorf("gather metrics: %w", err)
	}
	var lines []string
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			value := metricValue(m)
			if value == 0 {
				continue
			}
			lines = append(lines, fmt.Sprintf("  %-60s %g", mf.GetName()+formatLabels(m.GetLabel()), value))
		}
	}
	sort.Strings(lines)
	var b strings.Builder
	for _, line := range lines {
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String(), nil
}

func metricValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

func formatLabels(labels []*dto.LabelPair) string {
	if len(labels) == 0 {
		return ""
	}
	parts := make([]string, 0, len(labels))
	for _, l := range labels {
		if l.GetName() == "vcpus" || l.GetName() == "memory_mib" {
			continue // the stack and version name the bucket in this demo
		}
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, ",") + "}"
}
