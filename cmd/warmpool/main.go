// Command warmpool keeps warm pools of VMs restored from snapshots, runs the
// pool as a host agent, and measures it.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// rootCmd is the top-level command. Each subcommand adds itself to it from
// an init function in its own file.
var rootCmd = &cobra.Command{
	Use:           "warmpool",
	Short:         "Warm pools of microVMs restored from snapshots",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "warmpool:", err)
		os.Exit(1)
	}
}
