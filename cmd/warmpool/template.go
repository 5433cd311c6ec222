package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/vm"
)

func init() {
	rootCmd.AddCommand(newTemplateCmd())
}

func newTemplateCmd() *cobra.Command {
	var opts providerOptions
	var out string
	key := vm.StackKey{Name: "base", Version: "1", VCPUs: 1, MemoryMiB: 128}

	cmd := &cobra.Command{
		Use:   "template --out DIR",
		Short: "Boot the guest once and save it as a snapshot that clones restore from",
		Long: `Boot the guest with the given machine shape, wait until its agent is
ready, and save it as a snapshot in DIR, which must not exist. The qemu
provider builds the guest into the cache directory first, or reuses it.
The snapshot reference is printed as JSON on stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("missing --out DIR")
			}
			if err := key.Validate(); err != nil {
				return err
			}
			if opts.cacheDir == "" {
				dir, err := defaultCacheDir()
				if err != nil {
					return err
				}
				opts.cacheDir = dir
			}
			dir, err := filepath.Abs(out)
			if err != nil {
				return fmt.Errorf("invalid --out %q: %w", out, err)
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

			setup, err := newProvider(ctx, opts, logger)
			if err != nil {
				return err
			}
			defer setup.close()

			if _, err := os.Lstat(dir); err == nil {
				return fmt.Errorf("invalid --out %s: it already exists: remove it or choose another", dir)
			}
			snap, accel, err := createSnapshotLocked(ctx, setup, key, dir, false)
			if err != nil {
				return err
			}
			record := struct {
				vm.Snapshot
				Stack vm.StackKey `json:"stack"`
				Accel string      `json:"accel,omitempty"`
			}{snap, key, accel}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(record)
		},
	}
	opts.addFlags(cmd)
	cmd.Flags().StringVar(&out, "out", "", "snapshot directory to create (required)")
	addStackFlags(cmd, &key)
	return cmd
}

// addStackFlags adds the flags that set the stack key of a command.
func addStackFlags(cmd *cobra.Command, key *vm.StackKey) {
	cmd.Flags().StringVar(&key.Name, "name", key.Name, "stack name")
	cmd.Flags().StringVar(&key.Version, "version", key.Version, "stack version")
	cmd.Flags().IntVar(&key.VCPUs, "vcpus", key.VCPUs, "number of vCPUs of the guest")
	cmd.Flags().IntVar(&key.MemoryMiB, "memory", key.MemoryMiB, "guest memory in MiB")
}

// createSnapshotLocked creates the snapshot dir while holding an flock on
// a lock file beside it, so that concurrent runs make one snapshot and the
// others load it. With the lock held, temporary directories of earlier
// runs that died while creating the same snapshot are removed, and so is
// an incomplete dir when replace is set.
func createSnapshotLocked(ctx context.Context, setup *providerSetup, key vm.StackKey, dir string, replace bool) (vm.Snapshot, string, error) {
	parent, base := filepath.Dir(dir), filepath.Base(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return vm.Snapshot{}, "", err
	}
	lock, err := os.OpenFile(filepath.Join(parent, "."+base+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return vm.Snapshot{}, "", fmt.Errorf("lock snapshot %s: %w", dir, err)
	}
	defer lock.Close()
	if err := lockFile(ctx, lock); err != nil {
		return vm.Snapshot{}, "", fmt.Errorf("lock snapshot %s: %w", dir, err)
	}

	// Another run may have created the snapshot while this one waited.
	if snap, accel, err := setup.loadSnapshot(dir); err == nil {
		return snap, accel, nil
	}
	// The qemu provider writes a template into ".<base>.tmp-*" first.
	stale, _ := filepath.Glob(filepath.Join(parent, "."+base+".tmp-*"))
	for _, path := range stale {
		if err := os.RemoveAll(path); err != nil {
			return vm.Snapshot{}, "", fmt.Errorf("remove stale temporary snapshot: %w", err)
		}
	}
	if replace {
		if err := os.RemoveAll(dir); err != nil {
			return vm.Snapshot{}, "", err
		}
	}
	return setup.createSnapshot(ctx, key, dir)
}

// lockFile takes an exclusive flock on f, polling so that ctx can end the
// wait. The kernel releases the lock when f is closed or the process dies.
func lockFile(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
