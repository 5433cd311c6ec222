package fcemu

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

// Environment variables read by OptionsFromEnv. The provider passes its
// environment and its configured extra variables to the process it spawns,
// so tests steer each emulated VM through them.
const (
	EnvSpec              = "FCEMU_SPEC"    // path of the API description (else FIRECRACKER_API_SPEC)
	EnvSpecFD            = "FCEMU_SPEC_FD" // inherited descriptor of the description, set by the jailer mode
	EnvVersion           = "FCEMU_VERSION"
	EnvLatency           = "FCEMU_LATENCY"
	EnvCrashOn           = "FCEMU_CRASH_ON"
	EnvHangOn            = "FCEMU_HANG_ON"
	EnvFaultProbability  = "FCEMU_FAULT_PROBABILITY"
	EnvAgentPort         = "FCEMU_AGENT_PORT"
	EnvHeartbeatPort     = "FCEMU_HEARTBEAT_PORT"
	EnvHeartbeatInterval = "FCEMU_HEARTBEAT_INTERVAL"
	EnvBootDelay         = "FCEMU_BOOT_DELAY"
	EnvGuestHang         = "FCEMU_GUEST_HANG"
	EnvReseedError       = "FCEMU_RESEED_ERROR" // message of the ERROR reply to every SEED
	EnvSeedFile          = "FCEMU_SEED_FILE"    // file that records the last accepted seed
)

// Defaults of the emulated guest agent. They equal the provider's defaults.
const (
	DefaultVersion       = "1.16.1"
	DefaultAgentPort     = 10000
	DefaultHeartbeatPort = 10001
)

// OptionsFromEnv builds Options from FCEMU_* variables, loading the API
// description named by EnvSpec, EnvSpecFD or fcspec.EnvVar.
func OptionsFromEnv() (Options, error) {
	opts := Options{
		Version:       envOr(EnvVersion, DefaultVersion),
		CrashOn:       os.Getenv(EnvCrashOn),
		HangOn:        os.Getenv(EnvHangOn),
		AgentPort:     DefaultAgentPort,
		HeartbeatPort: DefaultHeartbeatPort,
		GuestHang:     os.Getenv(EnvGuestHang) == "1",
		ReseedError:   os.Getenv(EnvReseedError),
		SeedFile:      os.Getenv(EnvSeedFile),
		// Faults happen on every matching request unless a probability
		// is set.
		FaultProbability: 1,
	}
	var err error
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{EnvLatency, &opts.Latency}, {EnvHeartbeatInterval, &opts.HeartbeatInterval}, {EnvBootDelay, &opts.BootDelay}} {
		if s := os.Getenv(d.name); s != "" {
			if *d.dst, err = time.ParseDuration(s); err != nil {
				return opts, fmt.Errorf("invalid %s %q: %w", d.name, s, err)
			}
		}
	}
	for _, p := range []struct {
		name string
		dst  *uint32
	}{{EnvAgentPort, &opts.AgentPort}, {EnvHeartbeatPort, &opts.HeartbeatPort}} {
		if s := os.Getenv(p.name); s != "" {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return opts, fmt.Errorf("invalid %s %q: %w", p.name, s, err)
			}
			*p.dst = uint32(v)
		}
	}
	if s := os.Getenv(EnvFaultProbability); s != "" {
		if opts.FaultProbability, err = strconv.ParseFloat(s, 64); err != nil {
			return opts, fmt.Errorf("invalid %s %q: %w", EnvFaultProbability, s, err)
		}
		if opts.FaultProbability < 0 || opts.FaultProbability > 1 {
			return opts, fmt.Errorf("invalid %s %q: use a probability from 0 to 1", EnvFaultProbability, s)
		}
	}

	opts.Spec, err = loadSpecFromEnv()
	return opts, err
}

func loadSpecFromEnv() (*fcspec.Spec, error) {
	if s := os.Getenv(EnvSpecFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", EnvSpecFD, s, err)
		}
		// Inside the jailer's chroot there is no /proc: read the descriptor.
		f := os.NewFile(uintptr(fd), EnvSpecFD)
		defer f.Close()
		data, err := io.ReadAll(f)
		if err != nil {
			return nil, fmt.Errorf("read API description from %s=%d: %w", EnvSpecFD, fd, err)
		}
		return fcspec.LoadData(data, EnvSpecFD)
	}
	path := envOr(EnvSpec, os.Getenv(fcspec.EnvVar))
	if path == "" {
		return nil, fmt.Errorf("missing API description: set %s or %s to the path of firecracker-api.yaml", EnvSpec, fcspec.EnvVar)
	}
	return fcspec.Load(path)
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
