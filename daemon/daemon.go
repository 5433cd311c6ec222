package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/warmpool/warmpool/daemon/observe"
	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// storeLockTimeout is how long Start waits for another process to release
// the record store's file lock.
const storeLockTimeout = 2 * time.Second

// Options are the parts of a Daemon that do not come from the config file.
type Options struct {
	// ConfigPath is the file Reload reads again.
	ConfigPath string
	// Logger receives operator events. Nil discards them.
	Logger *slog.Logger
	// Clock is passed to the pool and the recorder. Nil means the real clock.
	Clock clockwork.Clock
	// Provider replaces the provider the config describes, for tests.
	Provider vm.Provider
}

// Daemon is a running host agent: the pool, its record store, and the API.
type Daemon struct {
	configPath string
	log        *slog.Logger
	clock      clockwork.Clock
	registry   *prometheus.Registry
	recorder   *observe.Recorder
	provider   vm.Provider
	pool       *pool.Pool
	store      *state.Store
	ready      atomic.Bool

	// mu guards cfg and destroying. No VMM call, store write or pool call
	// happens while it is held.
	mu         sync.Mutex
	cfg        *Config
	destroying map[string]bool

	// recordsChanged receives a value, without blocking, after each store
	// write of a pool hook. Shutdown waits on it for late restores.
	recordsChanged chan struct{}

	// reloadMu serializes Reload calls, which change the pool's buckets.
	reloadMu sync.Mutex

	server    *http.Server
	listeners []net.Listener
	serveDone chan struct{}
	serveErr  error

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start opens the record store and the API's listeners, builds the
// provider and the pool, recovers the VMs recorded by a previous run,
// registers the configured stacks and starts serving the API. The
// listeners are opened before any VM is touched, so a second daemon on the
// same socket fails without changing anything. On failure Start undoes
// what it started. If ctx is cancelled during recovery, Start returns an
// error and leaves the records it has not handled yet for the next start.
func Start(ctx context.Context, cfg *Config, opts Options) (_ *Daemon, err error) {
	// d is not the named result: "return nil, err" must leave it set for
	// the deferred undo steps below.
	d := &Daemon{
		configPath: opts.ConfigPath,
		log:        opts.Logger,
		clock:      opts.Clock,
		registry:   prometheus.NewRegistry(),
		cfg:        cfg,
		destroying: make(map[string]bool),
		serveDone:  make(chan struct{}),

		recordsChanged: make(chan struct{}, 1),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.clock == nil {
		d.clock = clockwork.NewRealClock()
	}
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.recorder = observe.New(d.registry, d.clock)

	d.store, err = state.Open(cfg.StateDir, storeLockTimeout)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.store.Close()
		}
	}()

	d.recorder.SetHandedOutCount(d.countHandedOut)

	if err := d.listen(cfg.Listen); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.closeListeners()
		}
	}()

	d.provider = opts.Provider
	if d.provider == nil {
		d.provider, err = cfg.Provider.build(d.log, d.clock)
		if err != nil {
			return nil, err
		}
	}

	if err := d.checkStacks(cfg.Stacks); err != nil {
		return nil, fmt.Errorf("check stacks: %w", err)
	}

	pc := cfg.poolConfig()
	pc.Clock = d.clock
	pc.Hooks = pool.CombineHooks(d.storeHooks(), d.recorder.PoolHooks(), d.logHooks())
	d.pool, err = pool.New(d.provider, pc)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	defer func() {
		if err != nil {
			d.closePool(context.Background())
		}
	}()
	d.registry.MustRegister(pool.NewCollector(d.pool))

	adopt, err := d.recover(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d.registerStacks(cfg.Stacks, adopt)

	d.serve()
	d.ready.Store(true)
	d.log.Info("daemon started", "provider", d.provider.Name(), "socket", cfg.Listen.Socket,
		"tcp", cfg.Listen.TCP, "stacks", len(cfg.Stacks), "state_dir", cfg.StateDir)
	return d, nil
}

// registerStacks registers each stack and then adopts the VMs recovered
// for it.
func (d *Daemon) registerStacks(stacks []StackConfig, adopt map[vm.StackKey][]vm.Instance) {
	defaults := d.config().Pool
	kind := d.provider.Name()
	for _, s := range stacks {
		minDepth, maxDepth := s.Depth(defaults)
		recovered := adopt[s.Key]
		if len(recovered) == 0 {
			err := d.pool.Register(s.Key, s.snapshot(kind), pool.WithDepth(minDepth, maxDepth))
			if err != nil {
				d.log.Error("register stack failed", "stack", s.Key.String(), "error", err)
			}
			continue
		}

		// With min depth 0 the refiller restores nothing until a miss, so
		// it cannot start restores for a bucket that looks empty before
		// the recovered VMs are adopted. SetDepth then sets the real
		// depth, which also destroys adopted VMs above max depth.
		err := d.pool.Register(s.Key, s.snapshot(kind), pool.WithDepth(0, maxDepth))
		if err != nil {
			d.log.Error("register stack failed", "stack", s.Key.String(), "error", err)
			continue
		}
		for _, inst := range recovered {
			d.adopt(inst)
		}
		if err := d.pool.SetDepth(s.Key, minDepth, maxDepth); err != nil {
			d.log.Error("set stack depth failed", "stack", s.Key.String(), "error", err)
		}
	}
}

// listen opens the unix socket and, if set, the loopback TCP address.
func (d *Daemon) listen(lc ListenConfig) error {
	unixLn, err := listenUnix(lc.Socket, os.FileMode(lc.SocketMode))
	if err != nil {
		return err
	}
	d.listeners = append(d.listeners, unixLn)
	if lc.TCP != "" {
		tcpLn, err := listenTCP(lc.TCP)
		if err != nil {
			d.closeListeners()
			return err
		}
		d.listeners = append(d.listeners, tcpLn)
	}
	return nil
}

// closeListeners closes the listeners of a daemon that failed to start,
// which also removes the socket file.
func (d *Daemon) closeListeners() {
	for _, ln := range d.listeners {
		ln.Close()
	}
}

// serve starts the HTTP server on the listeners.
func (d *Daemon) serve() {
	d.server = &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	errs := make(chan error, len(d.listeners))
	for _, ln := range d.listeners {
		go func() { errs <- d.server.Serve(ln) }()
	}
	go func() {
		var all []error
		for range d.listeners {
			if err := <-errs; !errors.Is(err, http.ErrServerClosed) {
				all = append(all, err)
			}
		}
		d.serveErr = errors.Join(all...)
		close(d.serveDone)
	}()
}

// Addrs returns the addresses the API is served on.
func (d *Daemon) Addrs() []net.Addr {
	addrs := make([]net.Addr, 0, len(d.listeners))
	for _, ln := range d.listeners {
		addrs = append(addrs, ln.Addr())
	}
	return addrs
}

// Done is closed when the HTTP server has stopped serving.
func (d *Daemon) Done() <-chan struct{} { return d.serveDone }

// Shutdown stops accepting requests, waits for requests in progress, closes
// the pool (destroying its warm VMs) and the record store. Handed-out VMs
// keep running and stay recorded. The pool gets the config's
// shutdown_timeout unless ctx ends sooner. Calls after the first return
// the first call's result.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.shutdownOnce.Do(func() { d.shutdownErr = d.shutdown(ctx) })
	return d.shutdownErr
}

func (d *Daemon) shutdown(ctx context.Context) error {
	d.ready.Store(false)
	d.log.Info("daemon stopping")
	var errs []error

	// The pool closes while the HTTP server drains, so that no refill
	// starts after shutdown begins. Requests still in flight that reach
	// the pool get ErrClosed, which the API reports as the daemon stopping.
	poolCtx, cancelPool := context.WithTimeout(ctx, d.config().ShutdownTimeout)
	defer cancelPool()
	poolClosed := make(chan error, 1)
	go func() { poolClosed <- d.closePool(poolCtx) }()

	// Shutdown closes the listeners, and closing the unix listener removes
	// its socket file.
	httpCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := d.server.Shutdown(httpCtx); err != nil {
		errs = append(errs, fmt.Errorf("stop HTTP server: %w", err))
	}
	cancel()

	if err := <-poolClosed; err != nil {
		d.log.Warn("pool closed with errors", "error", err)
	}
	if err := d.waitPoolRecords(poolCtx); err != nil {
		errs = append(errs, err)
	}

	if err := d.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close record store: %w", err))
	}
	err := errors.Join(errs...)
	if err != nil {
		d.log.Error("daemon stopped with errors", "error", err)
	} else {
		d.log.Info("daemon stopped")
	}
	return err
}

// waitPoolRecords waits until no VM is recorded as restoring or warm. The
// pool's Close waits only its join budget for restores in flight, which
// then finish in the background: a cancelled restore removes what it
// started, and one that lands is destroyed by the pool. Exiting before
// they finish would leave half-made VMs for the next start to clean up.
// On timeout the rest stays recorded for the next start.
func (d *Daemon) waitPoolRecords(ctx context.Context) error {
	for {
		var pending []string
		recs, err := d.store.List()
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if rec.State == state.Restoring || rec.State == state.Warm {
				pending = append(pending, rec.ID)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-d.recordsChanged:
		case <-ctx.Done():
			return fmt.Errorf("VMs of the pool still recorded at shutdown, left for the next start: %v", pending)
		}
	}
}

func (d *Daemon) closePool(ctx context.Context) error {
	if err := d.pool.Close(ctx); err != nil {
		return fmt.Errorf("close pool: %w", err)
	}
	return nil
}

func (d *Daemon) config() *Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// countHandedOut returns the number of VMs recorded as handed out, or -1
// if the record store cannot be read.
func (d *Daemon) countHandedOut() int {
	recs, err := d.store.ListState(state.HandedOut)
	if err != nil {
		d.log.Error("count handed-out VMs failed", "error", err)
		return -1
	}
	return len(recs)
}

// Stats returns the pool's statistics.
func (d *Daemon) Stats() pool.Stats { return d.pool.Stats() }
