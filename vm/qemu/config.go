package qemu

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"
)

// Accelerations accepted by Config.Accel.
const (
	AccelAuto = "auto" // KVM when /dev/kvm opens and the guest boots under it, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Config configures a Provider. The yaml tags let a daemon embed it in its
// own configuration file. Zero durations are replaced by the defaults of
// DefaultConfig when the Provider is created.
type Config struct {
	// Binary is the QEMU system emulator to run.
	Binary string `yaml:"binary"`
	// StateDir contains one directory per running VM, with its QMP and
	// agent sockets, pid file and logs.
	StateDir string `yaml:"state_dir"`
	// Accel is the acceleration for new templates: auto, kvm or tcg.
	// Clones always use the acceleration recorded in their template.
	Accel string `yaml:"accel"`
	// Kernel and Initrd are the guest that templates boot. Restoring
	// clones does not need them, because each template keeps a copy.
	Kernel string `yaml:"kernel"`
	Initrd string `yaml:"initrd"`

	// HeartbeatMaxAge is the maximum age of the guest's last heartbeat
	// that Check accepts. The guest agent sends one every 100ms.
	HeartbeatMaxAge time.Duration `yaml:"heartbeat_max_age"`
	// BootTimeout bounds the cold boot of a template VM until its agent
	// reports ready.
	BootTimeout time.Duration `yaml:"boot_timeout"`
	// KVMBootTimeout bounds a boot under KVM when Accel is auto. A guest
	// that is not ready by then is booted again under TCG.
	KVMBootTimeout time.Duration `yaml:"kvm_boot_timeout"`
	// RestoreTimeout bounds a Restore whose context has no deadline.
	RestoreTimeout time.Duration `yaml:"restore_timeout"`
	// StopTimeout is how long Destroy waits after the QMP quit command
	// before it sends SIGKILL.
	StopTimeout time.Duration `yaml:"stop_timeout"`

	// Detached starts QEMU in its own session without a parent-death
	// signal, so VMs keep running when the process that started them
	// exits and can be taken over again with Reattach. When false, every
	// QEMU process is killed when its parent exits.
	Detached bool `yaml:"detached"`

	// Logger receives the provider's log lines. Nil discards them.
	Logger *slog.Logger `yaml:"-"`
}

// DefaultConfig returns a configuration that keeps VM state under stateDir.
func DefaultConfig(stateDir string) Config {
	return Config{
		Binary:          "qemu-system-x86_64",
		StateDir:        stateDir,
		Accel:           AccelAuto,
		HeartbeatMaxAge: time.Second,
		BootTimeout:     60 * time.Second,
		KVMBootTimeout:  10 * time.Second,
		RestoreTimeout:  30 * time.Second,
		StopTimeout:     2 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig(c.StateDir)
	if c.Binary == "" {
		c.Binary = d.Binary
	}
	if c.Accel == "" {
		c.Accel = d.Accel
	}
	durations := []struct{ field, fallback *time.Duration }{
		{&c.HeartbeatMaxAge, &d.HeartbeatMaxAge},
		{&c.BootTimeout, &d.BootTimeout},
		{&c.KVMBootTimeout, &d.KVMBootTimeout},
		{&c.RestoreTimeout, &d.RestoreTimeout},
		{&c.StopTimeout, &d.StopTimeout},
	}
	for _, dur := range durations {
		if *dur.field == 0 {
			*dur.field = *dur.fallback
		}
	}
	return c
}

// Validate reports every invalid field of c. Zero durations and an empty
// binary or accel are valid and mean the defaults.
func (c Config) Validate() error {
	var errs []error
	if c.StateDir == "" {
		errs = append(errs, errors.New("qemu config: missing state_dir"))
	} else if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("qemu config: state_dir %q must be an absolute path", c.StateDir))
	}

	switch c.Accel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		errs = append(errs, fmt.Errorf("qemu config: invalid accel %q: use auto, kvm or tcg", c.Accel))
	}

	if (c.Kernel == "") != (c.Initrd == "") {
		errs = append(errs, fmt.Errorf("qemu config: kernel %q and initrd %q must be set together", c.Kernel, c.Initrd))
	}

	durations := []struct {
		name  string
		value time.Duration
	}{
		{"heartbeat_max_age", c.HeartbeatMaxAge},
		{"boot_timeout", c.BootTimeout},
		{"kvm_boot_timeout", c.KVMBootTimeout},
		{"restore_timeout", c.RestoreTimeout},
		{"stop_timeout", c.StopTimeout},
	}
	for _, d := range durations {
		if d.value < 0 {
			errs = append(errs, fmt.Errorf("qemu config: invalid %s %s: must not be negative", d.name, d.value))
		}
	}
	if c.HeartbeatMaxAge > 0 && c.HeartbeatMaxAge <= heartbeatInterval {
		errs = append(errs, fmt.Errorf("qemu config: heartbeat_max_age %s must exceed the guest's heartbeat interval %s",
			c.HeartbeatMaxAge, heartbeatInterval))
	}
	return errors.Join(errs...)
}
