package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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
	// resolveCacheKey, when set, computes cacheKey on first use instead.
	resolveCacheKey func(context.Context) (string, error)
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

// newProvider builds the provider named by o.name.
func newProvider(ctx context.Context, o providerOptions, logger *slog.Logger) (*providerSetup, error) {
	switch o.name {
	case qemu.ProviderName:
		return newQEMUProvider(o, logger)
	case firecracker.ProviderName:
		return newFirecrackerProvider(o, logger)
	case "sim":
		return newSimProvider(o)
	}
	return nil, fmt.Errorf("invalid --provider %q: use qemu, firecracker or sim", o.name)
}

// newQEMUProvider returns the qemu provider. The guest is built, or found
// in the cache, only when a template is created or its cache key is
// needed, so restoring from a given --snapshot needs neither the guest
// nor the Go toolchain.
func newQEMUProvider(o providerOptions, logger *slog.Logger) (*providerSetup, error) {
	stateDir, removeStateDir, err := stateDirectory(o.stateDir)
	if err != nil {
		return nil, err
	}
	cfg := qemu.DefaultConfig(stateDir)
	cfg.Binary = o.qemuBinary
	cfg.Accel = o.accel
	cfg.Logger = logger
	p, err := qemu.New(cfg)
	if err != nil {
		removeStateDir()
		return nil, err
	}

	var guestOnce sync.Once
	var builtGuest guest.Guest
	var guestErr error
	buildGuest := func(ctx context.Context) (guest.Guest, error) {
		guestOnce.Do(func() {
			builtGuest, guestErr = guest.Build(ctx, guest.Options{OutDir: filepath.Join(o.cacheDir, "guest")})
			if guestErr == nil && !builtGuest.Cached {
				logger.Info("built guest", "dir", filepath.Dir(builtGuest.Kernel), "kernel_source", builtGuest.KernelSource)
			}
		})
		return builtGuest, guestErr
	}

	return &providerSetup{
		provider: p,
		createSnapshot: func(ctx context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error) {
			g, err := buildGuest(ctx)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			// Templates need the guest's kernel in the provider config. The
			// template VM lives only inside CreateTemplate, so a second
			// provider on the same state directory makes it.
			withGuest := cfg
			withGuest.Kernel, withGuest.Initrd = g.Kernel, g.Initrd
			tp, err := qemu.New(withGuest)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			t, err := tp.CreateTemplate(ctx, key, dir)
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
		resolveCacheKey: func(ctx context.Context) (string, error) {
			g, err := buildGuest(ctx)
			if err != nil {
				return "", err
			}
			return g.Key[:12] + "-" + o.accel, nil
		},
		close: removeStateDir,
	}, nil
}

func newSimProvider(o providerOptions) (*providerSetup, error) {
	p, err := sim.New(sim.Config{RestoreLatency: o.simRestore})
	if err != nil {
		return nil, err
	}
	return &providerSetup{
		provider:       p,
		createSnapshot: createSimSnapshot,
		loadSnapshot:   loadSimSnapshot,
		cacheKey:       "sim",
		close:          func() {},
	}, nil
}

// simSnapshotFile is the one file of a sim snapshot directory. The sim
// provider keeps no VM state, so the file only marks the directory as a
// sim snapshot.
const simSnapshotFile = "sim-snapshot.json"

// simSnapshotRecord is the content of simSnapshotFile.
type simSnapshotRecord struct {
	Provider string      `json:"provider"`
	Stack    vm.StackKey `json:"stack"`
}

// createSimSnapshot creates dir with a simSnapshotFile for key.
func createSimSnapshot(_ context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return vm.Snapshot{}, "", fmt.Errorf("sim snapshot: %w", err)
	}
	b, err := json.Marshal(simSnapshotRecord{Provider: "sim", Stack: key})
	if err != nil {
		return vm.Snapshot{}, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, simSnapshotFile), append(b, '\n'), 0o444); err != nil {
		os.RemoveAll(dir)
		return vm.Snapshot{}, "", fmt.Errorf("sim snapshot: %w", err)
	}
	return vm.Snapshot{ID: filepath.Base(dir), Provider: "sim", Path: dir}, "", nil
}

// loadSimSnapshot returns the sim snapshot in dir, or an error naming what
// dir holds instead.
func loadSimSnapshot(dir string) (vm.Snapshot, string, error) {
	b, err := os.ReadFile(filepath.Join(dir, simSnapshotFile))
	if err != nil {
		if _, qemuErr := os.Stat(filepath.Join(dir, qemu.MetadataFile)); qemuErr == nil {
			return vm.Snapshot{}, "", fmt.Errorf("sim snapshot: %s contains a qemu snapshot, not a sim one", dir)
		}
		return vm.Snapshot{}, "", fmt.Errorf("sim snapshot: %w", err)
	}
	var record simSnapshotRecord
	if err := json.Unmarshal(b, &record); err != nil || record.Provider != "sim" {
		return vm.Snapshot{}, "", fmt.Errorf("sim snapshot: invalid %s in %s: create the snapshot again",
			simSnapshotFile, dir)
	}
	return vm.Snapshot{ID: filepath.Base(dir), Provider: "sim", Path: dir}, "", nil
}

// stateDirectory returns dir, or a new temporary directory when dir is
// empty, and a function that removes the temporary one. A temporary
// directory holds a lock file that this process keeps locked, and
// temporary directories of runs that died without removing theirs are
// removed first.
func stateDirectory(dir string) (string, func(), error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", nil, fmt.Errorf("invalid --state-dir %q: %w", dir, err)
		}
		return abs, func() {}, nil
	}
	removeStaleStateDirs(os.TempDir())

	tmp, err := os.MkdirTemp("", stateDirPrefix)
	if err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(tmp, stateDirLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, fmt.Errorf("lock state directory: %w", err)
	}
	return tmp, func() {
		os.RemoveAll(tmp)
		lock.Close()
	}, nil
}

// Temporary state directories are named stateDirPrefix + random, and the
// process using one keeps an flock on stateDirLock inside it.
const (
	stateDirPrefix = "warmpool-"
	stateDirLock   = ".warmpool-state.lock"
)

// removeStaleStateDirs removes the temporary state directories in tmpDir
// whose lock file no process has locked, because the run that made them died. A
// directory without the lock file is left alone.
//
// NOTE: VM directories that a killed run leaves in a --state-dir of the
// user's choice are not reclaimed: their QEMUs die with their parent, and
// the directories must be removed by hand.
func removeStaleStateDirs(tmpDir string) {
	dirs, _ := filepath.Glob(filepath.Join(tmpDir, stateDirPrefix+"*"))
	for _, dir := range dirs {
		lock, err := os.OpenFile(filepath.Join(dir, stateDirLock), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.RemoveAll(dir)
		}
		lock.Close()
	}
}
