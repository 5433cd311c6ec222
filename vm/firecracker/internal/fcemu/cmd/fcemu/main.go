// Command fcemu replaces the firecracker binary in tests. It takes the
// firecracker command line that the provider uses and serves an emulated API
// on --api-sock. Started under the name "jailer" it emulates the jailer
// instead and then runs itself as the jailed firecracker.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
)

func main() {
	var err error
	if filepath.Base(os.Args[0]) == "jailer" {
		err = runJailer(os.Args[1:])
	} else {
		err = runFirecracker(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fcemu:", err)
		os.Exit(1)
	}
}

func runFirecracker(args []string) error {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "", "path of the API socket")
	fs.String("id", "anonymous-instance", "microVM id")
	fs.String("level", "Info", "log level")
	fs.String("log-path", "", "log file")
	fs.Bool("show-level", false, "show log level")
	fs.Bool("show-log-origin", false, "show log origin")
	fs.Bool("boot-timer", false, "log boot time")
	fs.Bool("no-seccomp", false, "disable seccomp")
	fs.Int64("start-time-us", 0, "start time set by the jailer")
	fs.Int64("start-time-cpu-us", 0, "start CPU time set by the jailer")
	fs.Int64("parent-cpu-time-us", 0, "parent CPU time set by the jailer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *apiSock == "" {
		return errors.New("missing --api-sock")
	}

	opts, err := fcemu.OptionsFromEnv()
	if err != nil {
		return err
	}
	opts.Log = log.New(os.Stderr, "fcemu: ", log.Lmicroseconds)
	emu, err := fcemu.New(opts, os.Exit)
	if err != nil {
		return err
	}
	defer emu.Close()

	ln, err := net.Listen("unix", *apiSock)
	if err != nil {
		return fmt.Errorf("open the API socket: %w", err)
	}
	opts.Log.Printf("serving API version %s on %s (pid %d)", opts.Version, *apiSock, os.Getpid())

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		opts.Log.Printf("exiting on %v", sig)
		emu.Close()
		os.Exit(0)
	}()
	return http.Serve(ln, emu)
}
