// Package daemon runs warmpool as a host agent. It reads a YAML config,
// keeps the pool filled and serves the HTTP API on a unix socket. It
// records every VM it starts, so it can recover after a crash, and it
// reloads its stacks on SIGHUP.
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// DefaultSocket is the unix socket path used by serve and by the client
// commands when no other is given.
const DefaultSocket = "/run/warmpool/warmpool.sock"

// maxConfigSize bounds the config file, which is read whole into memory.
const maxConfigSize = 1 << 20

// Config is the daemon's configuration file.
type Config struct {
	Provider ProviderConfig `yaml:"provider"`
	Pool     PoolConfig     `yaml:"pool"`
	Listen   ListenConfig   `yaml:"listen"`
	// StateDir is the directory of the VM record store (state.db). Like
	// listen.socket and snapshot paths, it may start with "~/".
	StateDir string `yaml:"state_dir"`
	// ShutdownTimeout bounds the pool's shutdown on SIGTERM or SIGINT.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxAcquireWait caps the wait_ms of an acquire request.
	MaxAcquireWait time.Duration `yaml:"max_acquire_wait"`
	Stacks         []StackConfig `yaml:"stacks"`
}

// PoolConfig is the pool section: the fields of pool.Config that can be set
// in a file. Fields left out keep pool.DefaultConfig's values.
type PoolConfig struct {
	MinDepth           int           `yaml:"min_depth"`
	MaxDepth           int           `yaml:"max_depth"`
	RefillInterval     time.Duration `yaml:"refill_interval"`
	MaxAge             time.Duration `yaml:"max_age"`
	RestoreConcurrency int           `yaml:"restore_concurrency"`
	RestoreTimeout     time.Duration `yaml:"restore_timeout"`
	DestroyTimeout     time.Duration `yaml:"destroy_timeout"`
	ProbeInterval      time.Duration `yaml:"probe_interval"`
	ProbeTimeout       time.Duration `yaml:"probe_timeout"`
	JoinBudget         time.Duration `yaml:"join_budget"`
	BackoffInitial     time.Duration `yaml:"backoff_initial"`
	BackoffMax         time.Duration `yaml:"backoff_max"`
	// MaxVMsPerStack caps max_depth, in the pool section and in each
	// stack, so a typo or a bad request cannot ask for a million VMs. It
	// is checked by the daemon and not passed to the pool.
	MaxVMsPerStack int `yaml:"max_vms_per_stack"`
}

// defaultMaxVMsPerStack is pool.max_vms_per_stack when the file leaves it
// out. Raise it in the file for hosts that keep larger buckets.
const defaultMaxVMsPerStack = 64

// ListenConfig is the listen section: where the HTTP API is served.
type ListenConfig struct {
	// Socket is the unix socket path.
	Socket string `yaml:"socket"`
	// SocketMode is the socket's permission bits, written in octal.
	SocketMode FileMode `yaml:"socket_mode"`
	// TCP is an optional loopback address such as 127.0.0.1:7070. Other
	// addresses are rejected because the API has no authentication.
	TCP string `yaml:"tcp"`
}

// StackConfig is one bucket of the pool.
type StackConfig struct {
	Key      vm.StackKey `yaml:"key"`
	Snapshot vm.Snapshot `yaml:"snapshot"`
	// MinDepth and MaxDepth default to the pool section's values.
	MinDepth *int `yaml:"min_depth"`
	MaxDepth *int `yaml:"max_depth"`
}

// Depth returns the stack's min and max depth, falling back to defaults.
func (s StackConfig) Depth(defaults PoolConfig) (minDepth, maxDepth int) {
	minDepth, maxDepth = defaults.MinDepth, defaults.MaxDepth
	if s.MinDepth != nil {
		minDepth = *s.MinDepth
	}
	if s.MaxDepth != nil {
		maxDepth = *s.MaxDepth
	}
	return minDepth, maxDepth
}

// FileMode is a permission mode written in octal in YAML, such as 0660.
type FileMode os.FileMode

// UnmarshalYAML parses the scalar as octal digits, with or without a
// leading 0 or 0o.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	text := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(text, 8, 32)
	if n.Kind != yaml.ScalarNode || err != nil || v > 0o777 {
		return fmt.Errorf("invalid mode %q: expected octal permission bits such as 0660", n.Value)
	}
	*m = FileMode(v)
	return nil
}

func (m FileMode) String() string { return fmt.Sprintf("%#o", uint32(m)) }

// DefaultConfig returns the configuration used for fields a file leaves out.
func DefaultConfig() Config {
	pc := pool.DefaultConfig()
	return Config{
		Provider: ProviderConfig{Kind: "sim"},
		Pool: PoolConfig{
			MinDepth:           pc.MinDepth,
			MaxDepth:           pc.MaxDepth,
			RefillInterval:     pc.RefillInterval,
			MaxAge:             pc.MaxAge,
			RestoreConcurrency: pc.RestoreConcurrency,
			RestoreTimeout:     pc.RestoreTimeout,
			DestroyTimeout:     pc.DestroyTimeout,
			ProbeInterval:      pc.ProbeInterval,
			ProbeTimeout:       pc.ProbeTimeout,
			JoinBudget:         pc.JoinBudget,
			BackoffInitial:     pc.BackoffInitial,
			BackoffMax:         pc.BackoffMax,
			MaxVMsPerStack:     defaultMaxVMsPerStack,
		},
		Listen:          ListenConfig{Socket: DefaultSocket, SocketMode: 0o660},
		StateDir:        "/var/lib/warmpool",
		ShutdownTimeout: 30 * time.Second,
		MaxAcquireWait:  30 * time.Second,
	}
}

// PoolConfig returns the pool.Config for this file, without hooks or clock.
func (c *Config) poolConfig() pool.Config {
	pc := pool.DefaultConfig()
	p := c.Pool
	pc.MinDepth, pc.MaxDepth = p.MinDepth, p.MaxDepth
	pc.RefillInterval, pc.MaxAge = p.RefillInterval, p.MaxAge
	pc.RestoreConcurrency = p.RestoreConcurrency
	pc.RestoreTimeout, pc.DestroyTimeout = p.RestoreTimeout, p.DestroyTimeout
	pc.ProbeInterval, pc.ProbeTimeout = p.ProbeInterval, p.ProbeTimeout
	pc.JoinBudget = p.JoinBudget
	pc.BackoffInitial, pc.BackoffMax = p.BackoffInitial, p.BackoffMax
	return pc
}

// LoadConfig reads and validates the config file at path. An error in the
// file's contents names the file, the line and column, and the field path,
// such as
// "warmpool.yaml:12:5: stacks[1].max_depth: must be >= min_depth (3)".
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, maxConfigSize)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes and validates a config file's contents. The name is
// used only in error messages.
func ParseConfig(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: config is empty: it needs at least a provider section", name)
	}

	checker := newYAMLChecker()
	checker.check(&root, reflectConfigType, "")
	if len(checker.errs) > 0 {
		return nil, formatFieldErrors(name, checker.errs, nil)
	}

	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: contains more than one YAML document: keep only one", name)
	}

	if err := cfg.expandHome(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cfg.resolveRelative(filepath.Dir(name)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cfg.Provider.setDefaults(cfg.StateDir)
	errs := cfg.validate()
	errs = append(errs, cfg.Provider.checkDetached(checker.positions)...)
	if len(errs) > 0 {
		return nil, formatFieldErrors(name, errs, checker.positions)
	}
	return &cfg, nil
}

// expandHome replaces a leading "~/" in state_dir, listen.socket and each
// snapshot path with the home directory of the user running the daemon.
func (c *Config) expandHome() error {
	paths := []*string{&c.StateDir, &c.Listen.Socket}
	for i := range c.Stacks {
		paths = append(paths, &c.Stacks[i].Snapshot.Path)
	}
	for _, p := range paths {
		if !strings.HasPrefix(*p, "~/") {
			continue
		}
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("expand %q: %w", *p, err)
		}
		*p = filepath.Join(home, (*p)[2:])
	}
	return nil
}

// resolveRelative makes a relative state_dir, listen.socket or snapshot
// path relative to baseDir, the config file's directory, so the daemon does
// not depend on the directory it was started from. Snapshot paths with a
// scheme such as sim:// are left as they are.
func (c *Config) resolveRelative(baseDir string) error {
	base, err := filepath.Abs(baseDir)
	if err != nil {
		return fmt.Errorf("resolve relative paths: %w", err)
	}
	paths := []*string{&c.StateDir, &c.Listen.Socket}
	for i := range c.Stacks {
		if !strings.Contains(c.Stacks[i].Snapshot.Path, "://") {
			paths = append(paths, &c.Stacks[i].Snapshot.Path)
		}
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return nil
}

// formatFieldErrors joins errs into one error. A field without a position of
// its own, such as a missing one, gets the position of its nearest parent.
func formatFieldErrors(name string, errs []fieldError, positions map[string]position) error {
	lines := make([]string, 0, len(errs))
	for _, e := range errs {
		pos := e.pos
		for p := e.path; pos == (position{}) && p != ""; p = parentPath(p) {
			pos = positions[p]
		}
		where := name
		if pos != (position{}) {
			where += ":" + pos.String()
		}
		lines = append(lines, fmt.Sprintf("%s: %s: %s", where, e.path, e.msg))
	}
	return errors.New(strings.Join(lines, "\n"))
}

// parentPath strips the last element of a field path: "a.b[2]" becomes
// "a.b", and "a.b" becomes "a".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func (c *Config) validate() []fieldError {
	var errs []fieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, fieldError{path: path, msg: fmt.Sprintf(format, args...)})
	}

	errs = append(errs, c.Provider.validate()...)
	errs = append(errs, c.Pool.validate()...)

	if c.Listen.Socket == "" {
		add("listen.socket", "missing: set a unix socket path such as %s", DefaultSocket)
	}
	if c.Listen.TCP != "" {
		if err := checkLoopback(c.Listen.TCP); err != nil {
			add("listen.tcp", "%v", err)
		}
	}
	if c.Listen.SocketMode&0o600 != 0o600 {
		add("listen.socket_mode", "%v gives the owner no read and write access: use 0600 or wider", c.Listen.SocketMode)
	}
	if c.StateDir == "" {
		add("state_dir", "missing: set the directory of the VM record store")
	}
	if c.ShutdownTimeout <= 0 {
		add("shutdown_timeout", "must be > 0, got %v", c.ShutdownTimeout)
	}
	if c.MaxAcquireWait < 0 {
		add("max_acquire_wait", "must be >= 0, got %v", c.MaxAcquireWait)
	}

	seen := make(map[vm.StackKey]int)
	for i, s := range c.Stacks {
		errs = append(errs, s.validate(fmt.Sprintf("stacks[%d]", i), c.Pool, c.Provider.Kind)...)
		if j, dup := seen[s.Key]; dup {
			add(fmt.Sprintf("stacks[%d].key", i), "duplicate of stacks[%d].key (%s)", j, s.Key)
		}
		seen[s.Key] = i
	}
	return errs
}

func (p PoolConfig) validate() []fieldError {
	var errs []fieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, fieldError{path: "pool." + path, msg: fmt.Sprintf(format, args...)})
	}
	if p.MinDepth < 0 {
		add("min_depth", "must be >= 0, got %d", p.MinDepth)
	}
	if p.MaxDepth < 1 {
		add("max_depth", "must be >= 1, got %d", p.MaxDepth)
	}
	if p.MaxDepth < p.MinDepth {
		add("max_depth", "must be >= min_depth (%d), got %d", p.MinDepth, p.MaxDepth)
	}
	if p.MaxVMsPerStack < 1 {
		add("max_vms_per_stack", "must be >= 1, got %d", p.MaxVMsPerStack)
	} else if p.MaxDepth > p.MaxVMsPerStack {
		add("max_depth", "must be <= max_vms_per_stack (%d), got %d", p.MaxVMsPerStack, p.MaxDepth)
	}
	if p.RestoreConcurrency < 1 {
		add("restore_concurrency", "must be >= 1, got %d", p.RestoreConcurrency)
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"refill_interval", p.RefillInterval},
		{"max_age", p.MaxAge},
		{"restore_timeout", p.RestoreTimeout},
		{"destroy_timeout", p.DestroyTimeout},
		{"probe_timeout", p.ProbeTimeout},
		{"join_budget", p.JoinBudget},
		{"backoff_initial", p.BackoffInitial},
		{"backoff_max", p.BackoffMax},
	}
	for _, f := range positive {
		if f.d <= 0 {
			add(f.name, "must be > 0, got %v", f.d)
		}
	}
	if p.ProbeInterval < 0 {
		add("probe_interval", "must be >= 0 (0 turns probing off), got %v", p.ProbeInterval)
	}
	if p.BackoffMax < p.BackoffInitial {
		add("backoff_max", "must be >= backoff_initial (%v), got %v", p.BackoffInitial, p.BackoffMax)
	}
	return errs
}

func (s StackConfig) validate(path string, defaults PoolConfig, providerKind string) []fieldError {
	var errs []fieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError{path: joinPath(path, field), msg: fmt.Sprintf(format, args...)})
	}
	if err := s.Key.Validate(); err != nil {
		// The field path already names the key.
		add("key", "%s", strings.TrimPrefix(err.Error(), "stack key: "))
	}
	if s.Snapshot.Path == "" {
		add("snapshot.path", "missing: set the snapshot's location")
	}
	if s.Snapshot.Provider != "" && s.Snapshot.Provider != providerKind {
		add("snapshot.provider", "%q does not match provider.kind %q", s.Snapshot.Provider, providerKind)
	}
	minDepth, maxDepth := s.Depth(defaults)
	if minDepth < 0 {
		add("min_depth", "must be >= 0, got %d", minDepth)
	}
	if maxDepth < 1 {
		add("max_depth", "must be >= 1, got %d", maxDepth)
	}
	if maxDepth < minDepth {
		add("max_depth", "must be >= min_depth (%d)", minDepth)
	}
	if defaults.MaxVMsPerStack >= 1 && maxDepth > defaults.MaxVMsPerStack {
		add("max_depth", "must be <= pool.max_vms_per_stack (%d), got %d", defaults.MaxVMsPerStack, maxDepth)
	}
	return errs
}

// snapshot returns the stack's snapshot with the defaults filled in: the
// provider kind, and the key as the id.
func (s StackConfig) snapshot(providerKind string) vm.Snapshot {
	snap := s.Snapshot
	if snap.Provider == "" {
		snap.Provider = providerKind
	}
	if snap.ID == "" {
		snap.ID = s.Key.Name + "@" + s.Key.Version
	}
	return snap
}

// checkLoopback returns an error unless addr is host:port with a loopback
// IP literal as host. Names such as "localhost" are rejected because what
// they resolve to is not under the daemon's control.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q: %v", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("invalid host %q: use a loopback IP such as 127.0.0.1 or ::1", host)
	}
	if !ip.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address: the API has no authentication, so only 127.0.0.0/8 and ::1 are allowed", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}
