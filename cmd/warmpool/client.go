package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/daemon"
	"github.com/warmpool/warmpool/vm"
)

// clientTimeout bounds a client command that does not wait for a refill.
const clientTimeout = 60 * time.Second

func init() {
	rootCmd.AddCommand(newAcquireCmd(), newStatusCmd(), newDestroyCmd())
}

func addSocketFlag(cmd *cobra.Command, socket *string) {
	cmd.Flags().StringVar(socket, "socket", daemon.DefaultSocket, "unix socket of the warmpool daemon")
}

func newAcquireCmd() *cobra.Command {
	var (
		socket, stack string
		vcpus, memory int
		wait          time.Duration
		cold          bool
	)
	cmd := &cobra.Command{
		Use:   "acquire --stack NAME@VERSION --vcpus N --memory MIB",
		Short: "Take a warm VM from the daemon's pool and print it as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if wait < 0 {
				return fmt.Errorf("invalid --wait %v: must be 0 or more, such as 2s", wait)
			}
			name, version, ok := strings.Cut(stack, "@")
			if !ok {
				return fmt.Errorf("invalid --stack %q: use NAME@VERSION", stack)
			}
			req := daemon.AcquireRequest{
				Stack:        vm.StackKey{Name: name, Version: version, VCPUs: vcpus, MemoryMiB: memory},
				WaitMS:       wait.Milliseconds(),
				ColdFallback: cold,
			}
			if err := req.Stack.Validate(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), clientTimeout+wait)
			defer cancel()
			resp, err := daemon.NewClient(socket).Acquire(ctx, req)
			if err != nil {
				return err
			}
			return printJSON(resp)
		},
	}
	addSocketFlag(cmd, &socket)
	cmd.Flags().StringVar(&stack, "stack", "", "stack as NAME@VERSION (required)")
	cmd.Flags().IntVar(&vcpus, "vcpus", 1, "number of vCPUs of the stack")
	cmd.Flags().IntVar(&memory, "memory", 128, "memory of the stack, in MiB")
	cmd.Flags().DurationVar(&wait, "wait", 0, "how long to wait for a refill when no VM is warm, such as 2s")
	cmd.Flags().BoolVar(&cold, "cold", false, "restore a VM from the snapshot if none is warm")
	_ = cmd.MarkFlagRequired("stack")
	return cmd
}

func newStatusCmd() *cobra.Command {
	var (
		socket string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's pools and handed-out VMs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), clientTimeout)
			defer cancel()
			client := daemon.NewClient(socket)
			pools, err := client.Pools(ctx)
			if err != nil {
				return err
			}
			vms, err := client.VMs(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(map[string]any{"pools": pools, "vms": vms})
			}
			printStatus(pools, vms)
			return nil
		},
	}
	addSocketFlag(cmd, &socket)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of tables")
	return cmd
}

func printStatus(pools daemon.PoolsResponse, vms daemon.VMsResponse) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STACK\tWARM\tRESTORING\tMIN\tMAX\tHITS\tMISSES\tLAST ERROR")
	for _, b := range pools.Buckets {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", b.Stack, b.Warm, b.Restoring,
			b.MinDepth, b.MaxDepth, b.Hits, b.Misses, b.LastError)
	}
	tw.Flush()

	fmt.Printf("\n%d handed-out VMs\n", len(vms.VMs))
	if len(vms.VMs) == 0 {
		return
	}
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTACK\tPID\tSINCE")
	for _, r := range vms.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", r.ID, r.Stack, r.PID, r.UpdatedAt.Format(time.RFC3339))
	}
	tw.Flush()
}

func newDestroyCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "destroy ID",
		Short: "Destroy a handed-out VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := vm.ValidateID(args[0]); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), clientTimeout)
			defer cancel()
			if err := daemon.NewClient(socket).Destroy(ctx, args[0]); err != nil {
				return err
			}
			fmt.Printf("destroyed %s\n", args[0])
			return nil
		},
	}
	addSocketFlag(cmd, &socket)
	return cmd
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
