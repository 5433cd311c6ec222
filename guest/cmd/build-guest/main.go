// Command build-guest builds the kernel and initramfs that warmpool's QEMU
// VMs boot, into the directory given by -out. Firecracker VMs boot the same
// initramfs with an uncompressed kernel of their own. A second run with the
// same inputs does nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/warmpool/warmpool/guest"
)

func main() {
	var opts guest.Options
	flag.StringVar(&opts.OutDir, "out", "", "output directory (required)")
	flag.StringVar(&opts.Kernel, "kernel", "", "kernel image; default: the one of Debian's "+guest.KernelPackage)
	flag.StringVar(&opts.Busybox, "busybox", "", "static busybox; default: the one of Debian's "+guest.BusyboxPackage)
	flag.Parse()

	if opts.OutDir == "" {
		fmt.Fprintln(os.Stderr, "build-guest: missing -out DIR")
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	g, err := guest.Build(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build-guest:", err)
		os.Exit(1)
	}
	state := "built"
	if g.Cached {
		state = "up to date"
	}
	fmt.Printf("guest %s in %s (kernel from %s, key %.12s)\n", state, opts.OutDir, g.KernelSource, g.Key)
}
