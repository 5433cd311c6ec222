package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/guest"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker"
	"github.com/warmpool/warmpool/vm/qemu"
	"github.com/warmpool/warmpool/vm/sim"
)

// providerOptions are the flags that choose and configure the VM provider
// of the template and bench commands.
type providerOptions struct {
	name        string
	cacheDir    string
	stateDir    string
	accel       string
	qemuBinary  string
	simRestore  time.Duration
	firecracker firecrackerFlags
}

func (o *providerOptions) addFlags(cmd *cobra.Command) {
	flags := cmd.Flags()
	flags.StringVar(&o.name, "provider", "qemu", "VM provider: qemu, firecracker or sim")
	flags.StringVar(&o.cacheDir, "cache-dir", "",
		"directory for the built guest and cached templates (default $XDG_CACHE_HOME/warmpool or ~/.cache/warmpool)")
	flags.StringVar(&o.stateDir, "state-dir", "",
		"directory for the sockets and logs of running VMs (default: a temporary directory removed on exit)")
	flags.StringVar(&o.accel, "accel", qemu.AccelAuto, "qemu acceleration for new templates: auto, kvm or tcg")
	flags.StringVar(&o.qemuBinary, "qemu", "qemu-system-x86_64", "QEMU system emulator binary")
	flags.DurationVar(&o.simRestore, "sim-restore-latency", 100*time.Millisecond,
		"duration of one restore of the sim provider")
	o.firecracker.addFlags(cmd)
}

// providerSetup is a provider chosen by --provider with what the template
// and bench commands need beyond vm.Provider.
type providerSetup struct {
	provider vm.Provider
	// createSnapshot makes a snapshot of key in dir, which must not exist.
	createSnapshot func(ctx context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error)
	// loadSnapshot returns the snapshot in dir and its acceleration, or an
	// error if dir holds no complete snapshot.
	loadSnapshot func(dir string) (vm.Snapshot, string, error)
	// memoryPSS returns the proportional set size in bytes of a VM's VMM
	// process. Nil means the provider has no such process.
	memoryPSS func(vm.Instance) (int64, error)
	// cacheKey identifies the guest that snapshots are made from, so a
	// cached template is reused only for the same guest.
	cacheKey string
	// close removes what newProvider created, such as a temporary state
	// directory. It runs after every VM is destroyed.
	close func()
}

// defaultCacheDir returns $XDG_CACHE_HOME/warmpool, or ~/.cache/warmpool.
func defaultCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: set --cache-dir: %w", err)
	}
	return filepath.Join(dir, "warmpool"), nil
}

// newProvider builds the provider named by o.name. For qemu it first builds
// the guest into the cache directory, or finds it there.
func newProvider(ctx context.Context, o providerOptions, logger *slog.Logger) (*providerSetup, error) {
	switch o.name {
	case qemu.ProviderName:
		return newQEMUProvider(ctx, o, logger)
	case firecracker.ProviderName:
		return newFirecrackerProvider(o, logger)
	case "sim":
		return newSimProvider(o)
	}
	return nil, fmt.Errorf("invalid --provider %q: use qemu, firecracker or sim", o.name)
}

func newQEMUProvider(ctx context.Context, o providerOptions, logger *slog.Logger) (*providerSetup, error) {
	g, err := guest.Build(ctx, guest.Options{OutDir: filepath.Join(o.cacheDir, "guest")})
	if err != nil {
		return nil, err
	}
	if !g.Cached {
		logger.Info("built guest", "dir", filepath.Dir(g.Kernel), "kernel_source", g.KernelSource)
	}

	stateDir, removeStateDir, err := stateDirectory(o.stateDir)
	if err != nil {
		return nil, err
	}
	cfg := qemu.DefaultConfig(stateDir)
	cfg.Binary = o.qemuBinary
	cfg.Accel = o.accel
	cfg.Kernel = g.Kernel
	cfg.Initrd = g.Initrd
	cfg.Logger = logger
	p, err := qemu.New(cfg)
	if err != nil {
		removeStateDir()
		return nil, err
	}

	return &providerSetup{
		provider: p,
		createSnapshot: func(ctx context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error) {
			t, err := p.CreateTemplate(ctx, key, dir)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			logger.Info("created template", "dir", dir, "accel", t.Metadata.Accel,
				"boot_time", t.BootTime.Round(time.Millisecond), "save_time", t.SaveTime.Round(time.Millisecond))
			return t.Snapshot, t.Metadata.Accel, nil
		},
		loadSnapshot: func(dir string) (vm.Snapshot, string, error) {
			meta, err := qemu.ReadMetadata(dir)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			snap := vm.Snapshot{ID: filepath.Base(dir), Provider: qemu.ProviderName, Path: dir}
			return snap, meta.Accel, nil
		},
		memoryPSS: p.MemoryPSS,
		cacheKey:  g.Key[:12] + "-" + o.accel,
		close:     removeStateDir,
	}, nil
}

func newSimProvider(o providerOptions) (*providerSetup, error) {
	p, err := sim.New(sim.Config{RestoreLatency: o.simRestore})
	if err != nil {
		return nil, err
	}
	snapshot := func(dir string) vm.Snapshot {
		return vm.Snapshot{ID: filepath.Base(dir), Provider: "sim", Path: dir}
	}
	return &providerSetup{
		provider: p,
		createSnapshot: func(_ context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error) {
			return snapshot(dir), "", nil
		},
		loadSnapshot: func(dir string) (vm.Snapshot, string, error) {
			return snapshot(dir), "", nil
		},
		cacheKey: "sim",
		close:    func() {},
	}, nil
}

// stateDirectory returns dir, or a new temporary directory when dir is
// empty, and a function that removes the temporary one.
func stateDirectory(dir string) (string, func(), error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", nil, fmt.Errorf("invalid --state-dir %q: %w", dir, err)
		}
		return abs, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "warmpool-")
	if err != nil {
		return "", nil, err
	}
	return tmp, func() { os.RemoveAll(tmp) }, nil
}
