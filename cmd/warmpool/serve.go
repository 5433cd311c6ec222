package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/daemon"
)

// duplicateSignalWindow is how long after the first stop signal another one
// is taken as a copy of it rather than a request to exit at once.
const duplicateSignalWindow = 500 * time.Millisecond

func init() {
	rootCmd.AddCommand(newServeCmd())
}

func newServeCmd() *cobra.Command {
	var configPath, logFormat, logLevel string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the host agent: keep pools warm and serve the API on a unix socket",
		Long: `Run the host agent. It keeps the configured stacks warm and serves the
HTTP API on the config's unix socket. SIGHUP reloads the stacks from the
config file. SIGTERM or SIGINT stops it: warm VMs are destroyed, handed-out
VMs keep running. A second SIGTERM or SIGINT exits at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(logFormat, logLevel)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), configPath, logger)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "YAML config file (required)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log format: text or json")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "minimum log level: debug, info, warn or error")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q: use text or json", format)
}

// serve runs the daemon until SIGTERM or SIGINT, reloading on SIGHUP.
func serve(parent context.Context, configPath string, logger *slog.Logger) error {
	cfg, err := daemon.LoadConfig(configPath)
	if err != nil {
		return err
	}

	// One goroutine owns the signals. The first SIGTERM or SIGINT cancels
	// ctx, which also interrupts a recovery still running in Start. A
	// second one exits at once without cleaning up.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	reloads := make(chan struct{}, 1)
	go func() {
		var stoppingAt time.Time
		for sig := range signals {
			switch {
			case sig == syscall.SIGHUP:
				select {
				case reloads <- struct{}{}:
				default:
				}
			case stoppingAt.IsZero():
				stoppingAt = time.Now()
				logger.Info("signal received, stopping", "signal", sig.String())
				cancel()
			case time.Since(stoppingAt) < duplicateSignalWindow:
				// A supervisor such as GNU timeout signals both the daemon
				// and its process group, so one stop can arrive twice.
				logger.Info("repeated signal ignored, still stopping", "signal", sig.String())
			default:
				logger.Warn("second signal received, exiting now", "signal", sig.String())
				os.Exit(1)
			}
		}
	}()

	d, err := daemon.Start(ctx, cfg, daemon.Options{ConfigPath: configPath, Logger: logger})
	if err != nil {
		logger.Error("start failed", "error", err)
		return err
	}
	for {
		select {
		case <-reloads:
			logger.Info("SIGHUP received, reloading config", "config", configPath)
			_ = d.Reload(ctx) // Reload logs its own errors.
		case <-d.Done():
			logger.Error("API server stopped unexpectedly")
			return d.Shutdown(context.Background())
		case <-ctx.Done():
			// Shutdown logs the errors of the VMs it failed to destroy,
			// which stay recorded for the next start, so the stop itself
			// succeeded.
			_ = d.Shutdown(context.Background())
			return nil
		}
	}
}
