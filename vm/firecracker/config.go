package firecracker

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// Network modes for clones of one snapshot. Every clone of a snapshot
// inherits the TAP device names of the VM the snapshot was taken from.
const (
	// NetworkOverride renames each clone's TAP devices with
	// network_overrides on snapshot load (Firecracker 1.12.0 and later).
	NetworkOverride = "override"
	// NetworkNamespace runs each clone in its own network namespace, where
	// the TAP devices keep the snapshot's names.
	NetworkNamespace = "netns"
)

// Config configures the Firecracker provider. It can be embedded in the
// daemon's YAML configuration.
type Config struct {
	// FirecrackerBin is the firecracker executable.
	FirecrackerBin string `yaml:"firecracker_bin"`
	// StateDir contains one directory per VM (vms/<id>), template VMs
	// included.
	StateDir string `yaml:"state_dir"`
	// Jailer, when set, starts every VM through the Firecracker jailer.
	Jailer *JailerConfig `yaml:"jailer,omitempty"`

	// NetworkMode is NetworkOverride or NetworkNamespace.
	NetworkMode string `yaml:"network_mode"`
	// CreateTAPs makes the provider create each TAP device with
	// "ip tuntap add" before starting a VM, and delete it afterwards.
	// Without it the TAP devices must exist, or Firecracker creates them
	// itself when it runs as root.
	CreateTAPs bool `yaml:"create_taps"`

	// AgentPort is the guest vsock port of the guest agent that replies to
	// health probes. HeartbeatPort is the port the guest connects to on the
	// host to send heartbeats.
	AgentPort     uint32 `yaml:"agent_port"`
	HeartbeatPort uint32 `yaml:"heartbeat_port"`
	// HeartbeatTimeout is the maximum age of the last heartbeat before
	// Check reports the VM unusable.
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`
	// HealthTimeout bounds the guest health check and RNG reseed that end
	// a restore, and the readiness wait of a template boot.
	HealthTimeout time.Duration `yaml:"health_timeout"`

	// SocketTimeout bounds the wait for the API socket after spawning.
	SocketTimeout time.Duration `yaml:"socket_timeout"`
	// APITimeout bounds each API call. The caller's context deadline
	// applies when it is earlier. Snapshot creation gets 10 times as long.
	APITimeout time.Duration `yaml:"api_timeout"`
	// ShutdownGrace is how long Destroy waits after SendCtrlAltDel before it
	// kills the process. Zero kills at once.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`

	// Detached lets VMs outlive the program that started them (no parent
	// death signal, own session, output to a file in the VM directory), so
	// that a restarted daemon can reattach to them.
	Detached bool `yaml:"detached"`
	// Env lists extra NAME=value variables for the VMM process.
	Env []string `yaml:"env,omitempty"`
}

// JailerConfig configures the Firecracker jailer.
type JailerConfig struct {
	Bin           string `yaml:"bin"`
	UID           int    `yaml:"uid"`
	GID           int    `yaml:"gid"`
	ChrootBaseDir string `yaml:"chroot_base_dir"`
	// CgroupVersion is 1 or 2. Cgroups lists "<file>=<value>" settings,
	// such as "cpu.max=50000 100000", passed as --cgroup.
	CgroupVersion int      `yaml:"cgroup_version"`
	Cgroups       []string `yaml:"cgroups,omitempty"`
	ParentCgroup  string   `yaml:"parent_cgroup,omitempty"`
}

// Default values that WithDefaults fills in.
const (
	DefaultAgentPort        = vsockproto.DefaultAgentPort
	DefaultHeartbeatPort    = vsockproto.DefaultHeartbeatPort
	DefaultHeartbeatTimeout = 3 * time.Second
	DefaultHealthTimeout    = 10 * time.Second
	DefaultSocketTimeout    = 5 * time.Second
	DefaultAPITimeout       = 5 * time.Second
)

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.NetworkMode == "" {
		c.NetworkMode = NetworkOverride
	}
	if c.AgentPort == 0 {
		c.AgentPort = DefaultAgentPort
	}
	if c.HeartbeatPort == 0 {
		c.HeartbeatPort = DefaultHeartbeatPort
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = DefaultHealthTimeout
	}
	if c.SocketTimeout == 0 {
		c.SocketTimeout = DefaultSocketTimeout
	}
	if c.APITimeout == 0 {
		c.APITimeout = DefaultAPITimeout
	}
	if c.Jailer != nil && c.Jailer.CgroupVersion == 0 {
		c.Jailer.CgroupVersion = 2
	}
	return c
}

// Validate reports the first invalid field. Call it on WithDefaults' result.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("firecracker config: "+format, args...))
	}
	if c.FirecrackerBin == "" {
		add("missing firecracker_bin: set the path of the firecracker executable")
	} else if !filepath.IsAbs(c.FirecrackerBin) {
		add("firecracker_bin %q must be an absolute path, because the VMM starts in its VM directory", c.FirecrackerBin)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		add("state_dir %q must be an absolute path", c.StateDir)
	}
	if c.NetworkMode != NetworkOverride && c.NetworkMode != NetworkNamespace {
		add("invalid network_mode %q: use %q or %q", c.NetworkMode, NetworkOverride, NetworkNamespace)
	}
	if c.AgentPort == c.HeartbeatPort {
		add("agent_port and heartbeat_port are both %d: use two ports", c.AgentPort)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"heartbeat_timeout", c.HeartbeatTimeout}, {"health_timeout", c.HealthTimeout},
		{"socket_timeout", c.SocketTimeout}, {"api_timeout", c.APITimeout},
	} {
		if d.value <= 0 {
			add("%s %v must be positive", d.name, d.value)
		}
	}
	if c.ShutdownGrace < 0 {
		add("shutdown_grace %v must not be negative", c.ShutdownGrace)
	}
	if j := c.Jailer; j != nil {
		if j.Bin == "" {
			add("missing jailer.bin: set the path of the jailer executable")
		} else if !filepath.IsAbs(j.Bin) {
			add("jailer.bin %q must be an absolute path", j.Bin)
		}
		if j.UID < 0 || j.GID < 0 {
			add("jailer uid %d and gid %d must not be negative", j.UID, j.GID)
		}
		if !filepath.IsAbs(j.ChrootBaseDir) {
			add("jailer.chroot_base_dir %q must be an absolute path", j.ChrootBaseDir)
		}
		if j.CgroupVersion != 1 && j.CgroupVersion != 2 {
			add("invalid jailer.cgroup_version %d: use 1 or 2", j.CgroupVersion)
		}
	}
	return errors.Join(errs...)
}
