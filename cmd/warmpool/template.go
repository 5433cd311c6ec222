package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

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

			snap, accel, err := setup.createSnapshot(ctx, key, dir)
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
