package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

func init() {
	rootCmd.AddCommand(newBenchCmd())
}

// benchOptions are the flags of warmpool bench.
type benchOptions struct {
	provider providerOptions
	key      vm.StackKey
	samples  int
	depth    int
	// restoreConcurrency bounds the restores the warm pool runs at once.
	restoreConcurrency int
	json               bool
	plot               string
	// snapshotDir is the snapshot to restore from. Empty means a cached
	// template under the cache directory.
	snapshotDir string
}

func newBenchCmd() *cobra.Command {
	opts := benchOptions{
		key:     vm.StackKey{Name: "bench", Version: "1", VCPUs: 1, MemoryMiB: 128},
		samples: 50,
		depth:   2,
	}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Compare restoring a VM on demand with acquiring one from a warm pool",
		Long: `Measure the cold path (restore a VM from the snapshot until its guest
replies to a ping, then destroy it off the clock) against the warm path (Acquire from
a pool filled to --depth, on the same snapshot, in the same run), and print
p50, p90 and p99 of each and the ratio cold/warm at p50.

The qemu provider builds the guest and the template in the cache directory
when they are missing, so the command runs on a fresh machine. Every VM it
starts is destroyed before it exits, also on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()

			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			if !opts.json {
				logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			}
			return runBench(ctx, opts, logger, cmd.OutOrStdout())
		},
	}
	opts.provider.addFlags(cmd)
	addStackFlags(cmd, &opts.key)
	cmd.Flags().IntVar(&opts.samples, "samples", opts.samples, "number of measurements of each path")
	cmd.Flags().IntVar(&opts.depth, "depth", opts.depth,
		fmt.Sprintf("number of warm VMs the pool keeps, at most %d", maxBenchDepth))
	cmd.Flags().IntVar(&opts.restoreConcurrency, "restore-concurrency", 0,
		"restores the warm pool runs at once (default: the smaller of --depth and the number of CPUs)")
	cmd.Flags().BoolVar(&opts.json, "json", false, "print the result as one JSON object")
	cmd.Flags().StringVar(&opts.plot, "plot", "", "write the CDFs of both paths to FILE (.svg or .png)")
	cmd.Flags().StringVar(&opts.snapshotDir, "snapshot", "",
		"snapshot directory to restore from, created when missing (default: a template cached under --cache-dir)")
	return cmd
}

// maxBenchDepth bounds --depth, because every warm VM is a QEMU process
// and the memory measurement runs that many at once.
const maxBenchDepth = 64

func (o *benchOptions) validate() error {
	if o.samples < 1 {
		return fmt.Errorf("invalid --samples %d: must be at least 1", o.samples)
	}
	if o.depth < 1 || o.depth > maxBenchDepth {
		return fmt.Errorf("invalid --depth %d: must be 1 to %d", o.depth, maxBenchDepth)
	}
	if o.restoreConcurrency < 0 {
		return fmt.Errorf("invalid --restore-concurrency %d: must be at least 1, or 0 for the default", o.restoreConcurrency)
	}
	if o.restoreConcurrency == 0 {
		o.restoreConcurrency = min(o.depth, runtime.NumCPU())
	}
	if o.plot != "" {
		switch filepath.Ext(o.plot) {
		case ".svg", ".png":
		default:
			return fmt.Errorf("invalid --plot %q: the file name must end in .svg or .png", o.plot)
		}
	}
	if err := o.key.Validate(); err != nil {
		return err
	}
	if o.snapshotDir != "" {
		abs, err := filepath.Abs(o.snapshotDir)
		if err != nil {
			return fmt.Errorf("invalid --snapshot %q: %w", o.snapshotDir, err)
		}
		o.snapshotDir = abs
	}
	if o.provider.cacheDir == "" {
		dir, err := defaultCacheDir()
		if err != nil {
			return err
		}
		o.provider.cacheDir = dir
	}
	return nil
}

func runBench(ctx context.Context, opts benchOptions, logger *slog.Logger, out io.Writer) error {
	// Find an unwritable --plot file before the run, not after it.
	if opts.plot != "" {
		if err := checkWritable(opts.plot); err != nil {
			return fmt.Errorf("invalid --plot: %w", err)
		}
	}
	setup, err := newProvider(ctx, opts.provider, logger)
	if err != nil {
		return err
	}
	defer setup.close()

	snap, accel, err := benchSnapshot(ctx, setup, opts)
	if err != nil {
		return err
	}

	cold, err := measureCold(ctx, setup.provider, opts, snap)
	if err != nil {
		return fmt.Errorf("cold path: %w", err)
	}
	warm, pss, err := measureWarm(ctx, setup, opts, snap)
	if err != nil {
		return fmt.Errorf("warm path: %w", err)
	}

	result := summarize(setup.provider.Name(), accel, opts, cold, warm, pss)
	if opts.json {
		err = writeJSON(out, result)
	} else {
		writeTable(out, result)
	}
	if opts.plot != "" {
		if plotErr := plotCDFs(opts.plot, result, cold, warm); plotErr != nil {
			err = errors.Join(err, fmt.Errorf("plot: %w", plotErr))
		}
	}
	return err
}

// checkWritable creates path, or opens it for writing when it exists.
func checkWritable(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// benchSnapshot returns the snapshot in opts.snapshotDir, or the cached
// one for the bench's stack and guest, and creates it when it is missing.
// A cached directory that holds no complete snapshot is replaced, but a
// directory named by --snapshot never is.
func benchSnapshot(ctx context.Context, setup *providerSetup, opts benchOptions) (vm.Snapshot, string, error) {
	dir := opts.snapshotDir
	if dir == "" {
		cacheKey := setup.cacheKey
		if setup.resolveCacheKey != nil {
			var err error
			if cacheKey, err = setup.resolveCacheKey(ctx); err != nil {
				return vm.Snapshot{}, "", err
			}
		}
		k := opts.key
		name := fmt.Sprintf("%s-%s-%dcpu-%dmib-%s", k.Name, k.Version, k.VCPUs, k.MemoryMiB, cacheKey)
		dir = filepath.Join(opts.provider.cacheDir, "templates", name)
	}

	snap, accel, err := setup.loadSnapshot(dir)
	if err == nil {
		return snap, accel, nil
	}
	if _, statErr := os.Stat(dir); statErr == nil && opts.snapshotDir != "" {
		return vm.Snapshot{}, "", fmt.Errorf("--snapshot %s: %w", dir, err)
	}
	return createSnapshotLocked(ctx, setup, opts.key, dir, opts.snapshotDir == "")
}

// measureCold times Provider.Restore, which returns once the guest has
// replied to a ping. Each VM is destroyed after its sample, off the clock.
func measureCold(ctx context.Context, p vm.Provider, opts benchOptions, snap vm.Snapshot) ([]time.Duration, error) {
	bar := newProgressBar(opts.samples, "cold restore")
	defer bar.Finish()

	samples := make([]time.Duration, 0, opts.samples)
	for range opts.samples {
		id := pool.NewVMID(opts.key)
		start := time.Now()
		inst, err := p.Restore(ctx, id, opts.key, snap)
		took := time.Since(start)
		if err != nil {
			// Restore cleans up after itself, and this removes whatever a
			// cancelled one may have left.
			return nil, errors.Join(err, destroyOffClock(p, vm.Instance{ID: id}))
		}
		if err := destroyOffClock(p, inst); err != nil {
			return nil, err
		}
		samples = append(samples, took)
		bar.Add(1)
	}
	return samples, nil
}

// measureWarm times Pool.Acquire from a pool filled to opts.depth before
// each sample, then measures the memory of a full set of warm clones. The
// waits for refills are off the clock.
func measureWarm(ctx context.Context, setup *providerSetup, opts benchOptions, snap vm.Snapshot) ([]time.Duration, float64, error) {
	cfg := pool.DefaultConfig()
	cfg.MinDepth, cfg.MaxDepth = opts.depth, opts.depth
	cfg.RestoreConcurrency = max(opts.restoreConcurrency, 1)
	cfg.RefillInterval = 100 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.JoinBudget = closeBudget
	tracked := newTrackedProvider(setup.provider)
	warmPool, err := pool.New(tracked, cfg)
	if err != nil {
		return nil, 0, err
	}
	closed := false
	closePool := func() {
		if closed {
			return
		}
		closed = true
		closeCtx, cancel := context.WithTimeout(context.Background(), closeBudget)
		defer cancel()
		if err := warmPool.Close(closeCtx); err != nil {
			fmt.Fprintln(os.Stderr, "warmpool bench: close pool:", err)
		}
		// Close may return while restores run on, and this process may
		// exit right after, so wait for them and destroy what they left.
		if err := tracked.drain(closeBudget); err != nil {
			fmt.Fprintln(os.Stderr, "warmpool bench:", err)
		}
	}
	defer closePool()
	if err := warmPool.Register(opts.key, snap); err != nil {
		return nil, 0, err
	}

	bar := newProgressBar(opts.samples, "warm acquire")
	samples := make([]time.Duration, 0, opts.samples)
	for range opts.samples {
		if err := waitFilled(ctx, warmPool, opts.key, opts.depth); err != nil {
			return nil, 0, err
		}
		start := time.Now()
		h, err := warmPool.Acquire(ctx, opts.key)
		took := time.Since(start)
		if err != nil {
			return nil, 0, err
		}
		if err := destroyOffClock(setup.provider, h.Instance); err != nil {
			return nil, 0, err
		}
		samples = append(samples, took)
		bar.Add(1)
	}
	bar.Finish()

	// The pool is closed first, so no refill runs while memory is read.
	closePool()
	pss, err := measurePSS(ctx, setup, opts, snap)
	if err != nil {
		return nil, 0, fmt.Errorf("memory: %w", err)
	}
	return samples, pss, nil
}

// measurePSS restores opts.depth clones, one at a time, and returns their
// mean proportional set size in MiB once all of them run and no restore
// is in flight, so pages the clones share with each other are split
// between them. It returns 0 for a provider without a VMM process.
func measurePSS(ctx context.Context, setup *providerSetup, opts benchOptions, snap vm.Snapshot) (float64, error) {
	if setup.memoryPSS == nil {
		return 0, nil
	}

	var instances []vm.Instance
	defer func() {
		for _, inst := range instances {
			destroyOffClock(setup.provider, inst)
		}
	}()
	for range opts.depth {
		id := pool.NewVMID(opts.key)
		inst, err := setup.provider.Restore(ctx, id, opts.key, snap)
		if err != nil {
			return 0, errors.Join(err, destroyOffClock(setup.provider, vm.Instance{ID: id}))
		}
		instances = append(instances, inst)
	}

	var total int64
	for _, inst := range instances {
		pss, err := setup.memoryPSS(inst)
		if err != nil {
			return 0, err
		}
		total += pss
	}
	return float64(total) / float64(len(instances)) / (1 << 20), nil
}

// waitFilled waits until the stack's bucket has depth warm VMs. It returns
// an error when ctx ends or a restore fails, with the pool's last error.
func waitFilled(ctx context.Context, warmPool *pool.Pool, key vm.StackKey, depth int) error {
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for {
		for _, b := range warmPool.Stats().Buckets {
			if b.Key != key {
				continue
			}
			if b.Warm >= depth {
				return nil
			}
			if b.RestoresFailed > 0 {
				return fmt.Errorf("restore failed: %s", b.LastError)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// destroyOffClock destroys a VM with its own deadline, so that it also
// runs after the bench's context is cancelled by Ctrl-C.
func destroyOffClock(p vm.Provider, inst vm.Instance) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Destroy(ctx, inst); err != nil {
		return fmt.Errorf("destroy %s: %w", inst.ID, err)
	}
	return nil
}

// newProgressBar returns a progress bar on stderr, or one that draws
// nothing when stderr is not a terminal.
func newProgressBar(total int, description string) *progressbar.ProgressBar {
	if _, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS); err != nil {
		return progressbar.DefaultSilent(int64(total))
	}
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(50*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// closeBudget bounds how long the bench waits, when it stops, for the pool
// to close and for restores still running to return.
const closeBudget = time.Minute

// trackedProvider records the VMs that the warm pool restores and has not
// destroyed, so the bench can destroy them itself when the pool's Close
// returns before its restores do.
type trackedProvider struct {
	vm.Provider

	restores sync.WaitGroup // counts Restore calls in flight
	mu       sync.Mutex     // guards live, and is never held during a provider call
	live     map[string]vm.Instance
}

func newTrackedProvider(p vm.Provider) *trackedProvider {
	return &trackedProvider{Provider: p, live: map[string]vm.Instance{}}
}

// Restore records id before the restore starts, so that drain also
// removes what an interrupted restore left.
func (t *trackedProvider) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	t.restores.Add(1)
	defer t.restores.Done()
	t.mu.Lock()
	t.live[id] = vm.Instance{ID: id}
	t.mu.Unlock()

	inst, err := t.Provider.Restore(ctx, id, key, snap)
	if err == nil {
		t.mu.Lock()
		t.live[id] = inst
		t.mu.Unlock()
	}
	return inst, err
}

func (t *trackedProvider) Destroy(ctx context.Context, inst vm.Instance) error {
	err := t.Provider.Destroy(ctx, inst)
	if err == nil {
		t.mu.Lock()
		delete(t.live, inst.ID)
		t.mu.Unlock()
	}
	return err
}

// drain waits up to timeout for every restore to return and then destroys
// every VM that was restored and not destroyed.
func (t *trackedProvider) drain(timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		t.restores.Wait()
		close(done)
	}()
	var errs []error
	select {
	case <-done:
	case <-time.After(timeout):
		errs = append(errs, fmt.Errorf("restores still running after %s: their VMs may be left behind", timeout))
	}

	t.mu.Lock()
	left := make([]vm.Instance, 0, len(t.live))
	for _, inst := range t.live {
		left = append(left, inst)
	}
	t.mu.Unlock()
	for _, inst := range left {
		if err := destroyOffClock(t, inst); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
