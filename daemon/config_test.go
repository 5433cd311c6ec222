package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
)

const validConfig = `provider:
  kind: sim
  sim:
    restore_latency: 5ms
pool:
  min_depth: 1
  max_depth: 3
  refill_interval: 20ms
listen:
  socket: /run/test/warmpool.sock
  socket_mode: 0640
  tcp: 127.0.0.1:7070
state_dir: /var/lib/test
stacks:
  - key: {name: py, version: "3.12", vcpus: 1, memory_mib: 256}
    snapshot: {path: sim://py}
  - key: {name: node, version: "22", vcpus: 2, memory_mib: 512}
    snapshot: {id: node-snap, path: sim://node}
    min_depth: 0
    max_depth: 1
`

func TestParseConfigValid(t *testing.T) {
	cfg, err := ParseConfig("ok.yaml", []byte(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Provider.Kind != "sim" || cfg.Provider.Sim == nil {
		t.Fatalf("provider = %+v, want sim with its section", cfg.Provider)
	}
	if cfg.Provider.Sim.RestoreLatency != 5*time.Millisecond {
		t.Errorf("sim restore_latency = %v, want 5ms", cfg.Provider.Sim.RestoreLatency)
	}
	if cfg.Listen.SocketMode != 0o640 {
		t.Errorf("socket_mode = %v, want 0640", cfg.Listen.SocketMode)
	}
	if cfg.Pool.RefillInterval != 20*time.Millisecond {
		t.Errorf("refill_interval = %v, want 20ms", cfg.Pool.RefillInterval)
	}
	defaults := DefaultConfig()
	if cfg.Pool.MaxAge != defaults.Pool.MaxAge {
		t.Errorf("max_age = %v, want the default %v", cfg.Pool.MaxAge, defaults.Pool.MaxAge)
	}
	if cfg.ShutdownTimeout != defaults.ShutdownTimeout {
		t.Errorf("shutdown_timeout = %v, want the default %v", cfg.ShutdownTimeout, defaults.ShutdownTimeout)
	}
	if len(cfg.Stacks) != 2 {
		t.Fatalf("stacks = %d, want 2", len(cfg.Stacks))
	}

	minDepth, maxDepth := cfg.Stacks[0].Depth(cfg.Pool)
	if minDepth != 1 || maxDepth != 3 {
		t.Errorf("stacks[0] depth = %d..%d, want the pool's 1..3", minDepth, maxDepth)
	}
	minDepth, maxDepth = cfg.Stacks[1].Depth(cfg.Pool)
	if minDepth != 0 || maxDepth != 1 {
		t.Errorf("stacks[1] depth = %d..%d, want 0..1", minDepth, maxDepth)
	}

	snap := cfg.Stacks[0].snapshot("sim")
	want := vm.Snapshot{ID: "py@3.12", Provider: "sim", Path: "sim://py"}
	if snap != want {
		t.Errorf("stacks[0] snapshot = %+v, want %+v", snap, want)
	}
	if got := cfg.Stacks[1].snapshot("sim").ID; got != "node-snap" {
		t.Errorf("stacks[1] snapshot id = %q, want node-snap", got)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // a substring of the error
	}{
		{
			name: "unknown top-level field",
			yaml: "provider: {kind: sim}\nstate_dri: /x\n",
			want: "bad.yaml:2:1: state_dri: unknown field",
		},
		{
			name: "unknown nested field",
			yaml: "provider:\n  kind: sim\n  sim:\n    restore_latncy: 1s\n",
			want: "bad.yaml:4:5: provider.sim.restore_latncy: unknown field",
		},
		{
			name: "wrong type",
			yaml: "provider: {kind: sim}\npool:\n  min_depth: two\n",
			want: `bad.yaml:3:14: pool.min_depth: invalid value "two": expected an integer`,
		},
		{
			name: "invalid duration",
			yaml: "provider: {kind: sim}\npool:\n  max_age: 5 minutes\n",
			want: `bad.yaml:3:12: pool.max_age: invalid value "5 minutes": expected a duration`,
		},
		{
			name: "list where a mapping belongs",
			yaml: "provider: [sim]\n",
			want: "bad.yaml:1:11: provider: expected a mapping, got a list",
		},
		{
			name: "decimal pool depth",
			yaml: "provider: {kind: sim}\npool:\n  min_depth: 1.5\n",
			want: `bad.yaml:3:14: pool.min_depth: invalid value "1.5": expected an integer`,
		},
		{
			name: "decimal vcpus",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1.7, memory_mib: 64}\n    snapshot: {path: p}\n",
			want: `bad.yaml:3:41: stacks[0].key.vcpus: invalid value "1.7": expected an integer`,
		},
		{
			name: "decimal memory",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 256.5}\n    snapshot: {path: p}\n",
			want: `stacks[0].key.memory_mib: invalid value "256.5": expected an integer`,
		},
		{
			name: "qemu detached off",
			yaml: "provider:\n  kind: qemu\n  qemu:\n    detached: false\n",
			want: "bad.yaml:4:15: provider.qemu.detached: false is not supported: the daemon always runs VMs detached so they survive a restart; remove the field",
		},
		{
			name: "firecracker detached off",
			yaml: "provider:\n  kind: firecracker\n  firecracker:\n    detached: false\n",
			want: "bad.yaml:4:15: provider.firecracker.detached: false is not supported",
		},
		{
			name: "invalid key has no repeated prefix",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: \"../x\", version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n",
			want: `stacks[0].key: invalid name "../x"`,
		},
		{
			name: "stack depth above the cap",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n    max_depth: 1000000\n",
			want: "bad.yaml:5:16: stacks[0].max_depth: must be <= pool.max_vms_per_stack (64), got 1000000",
		},
		{
			name: "pool depth above the cap",
			yaml: "provider: {kind: sim}\npool:\n  max_vms_per_stack: 8\n  max_depth: 9\n",
			want: "bad.yaml:4:14: pool.max_depth: must be <= max_vms_per_stack (8), got 9",
		},
		{
			name: "cap below one",
			yaml: "provider: {kind: sim}\npool:\n  max_vms_per_stack: 0\n",
			want: "bad.yaml:3:22: pool.max_vms_per_stack: must be >= 1, got 0",
		},
		{
			name: "max below min in a stack",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n" +
				"  - key: {name: b, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n    min_depth: 3\n    max_depth: 2\n",
			want: "bad.yaml:8:16: stacks[1].max_depth: must be >= min_depth (3)",
		},
		{
			name: "invalid stack key",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: \"a b\", version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n",
			want: `bad.yaml:3:10: stacks[0].key: invalid name "a b"`,
		},
		{
			name: "missing snapshot path points at the stack",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n",
			want: "bad.yaml:3:5: stacks[0].snapshot.path: missing",
		},
		{
			name: "duplicate stack",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p}\n" +
				"  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: q}\n",
			want: "bad.yaml:5:10: stacks[1].key: duplicate of stacks[0].key",
		},
		{
			name: "unknown provider kind",
			yaml: "provider:\n  kind: xen\n",
			want: `bad.yaml:2:9: provider.kind: invalid value "xen"`,
		},
		{
			name: "section of another kind",
			yaml: "provider:\n  kind: sim\n  qemu: {accel: tcg}\n",
			want: `bad.yaml:3:9: provider.qemu: set, but provider.kind is "sim"`,
		},
		{
			name: "provider validation names its field",
			yaml: "provider:\n  kind: sim\n  sim:\n    hang_rate: 2\n",
			want: "bad.yaml:4:16: provider.sim.hang_rate: sim config: invalid hang_rate 2",
		},
		{
			name: "qemu validation names its field",
			yaml: "provider:\n  kind: qemu\n  qemu:\n    accel: hvf\n",
			want: `bad.yaml:4:12: provider.qemu.accel: qemu config: invalid accel "hvf"`,
		},
		{
			name: "firecracker without its binary",
			yaml: "provider:\n  kind: firecracker\n  firecracker:\n    network_mode: override\n",
			want: "bad.yaml:4:5: provider.firecracker.firecracker_bin: firecracker config: missing firecracker_bin",
		},
		{
			name: "non-loopback tcp",
			yaml: "provider: {kind: sim}\nlisten:\n  tcp: 0.0.0.0:7070\n",
			want: "bad.yaml:3:8: listen.tcp: 0.0.0.0 is not a loopback address",
		},
		{
			name: "host name as tcp",
			yaml: "provider: {kind: sim}\nlisten:\n  tcp: localhost:7070\n",
			want: `listen.tcp: invalid host "localhost"`,
		},
		{
			name: "decimal socket mode",
			yaml: "provider: {kind: sim}\nlisten:\n  socket_mode: 0990\n",
			want: `bad.yaml:3:16: listen.socket_mode: invalid mode "0990"`,
		},
		{
			name: "socket mode without owner access",
			yaml: "provider: {kind: sim}\nlisten:\n  socket_mode: 0060\n",
			want: "listen.socket_mode: 060 gives the owner no read and write access",
		},
		{
			name: "pool min above max",
			yaml: "provider: {kind: sim}\npool:\n  min_depth: 5\n  max_depth: 2\n",
			want: "bad.yaml:4:14: pool.max_depth: must be >= min_depth (5), got 2",
		},
		{
			name: "negative probe interval",
			yaml: "provider: {kind: sim}\npool:\n  probe_interval: -1s\n",
			want: "bad.yaml:3:19: pool.probe_interval: must be >= 0",
		},
		{
			name: "syntax error",
			yaml: "provider: {kind: sim\n",
			want: "bad.yaml: yaml: line 1",
		},
		{
			name: "two documents",
			yaml: "provider: {kind: sim}\n---\nprovider: {kind: sim}\n",
			want: "more than one YAML document",
		},
		{
			name: "empty file",
			yaml: "",
			want: "config is empty",
		},
		{
			name: "snapshot of another provider",
			yaml: "provider: {kind: sim}\nstacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: p, provider: qemu}\n",
			want: `bad.yaml:4:35: stacks[0].snapshot.provider: "qemu" does not match provider.kind "sim"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("ParseConfig succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseConfigReportsEveryError(t *testing.T) {
	yaml := "provider: {kind: sim}\npool:\n  min_depth: -1\n  restore_concurrency: 0\n"
	_, err := ParseConfig("bad.yaml", []byte(yaml))
	if err == nil {
		t.Fatal("ParseConfig succeeded")
	}
	for _, want := range []string{"pool.min_depth", "pool.restore_concurrency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %q, want it to name %s", err, want)
		}
	}
}

func TestParseConfigQEMUStateDirDefault(t *testing.T) {
	yaml := "provider:\n  kind: qemu\nstate_dir: /var/lib/wp\n"
	cfg, err := ParseConfig("q.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Provider.QEMU == nil {
		t.Fatal("qemu section not filled in")
	}
	if got := cfg.Provider.QEMU.StateDir; got != "/var/lib/wp/vms" {
		t.Errorf("qemu state_dir = %q, want /var/lib/wp/vms", got)
	}
}

func TestParseConfigFirecracker(t *testing.T) {
	yaml := "provider:\n  kind: firecracker\n  firecracker: {firecracker_bin: /usr/bin/firecracker}\nstate_dir: /var/lib/wp\n"
	cfg, err := ParseConfig("fc.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	fc := cfg.Provider.Firecracker
	if fc == nil {
		t.Fatal("firecracker section not filled in")
	}
	if fc.StateDir != "/var/lib/wp/fc" {
		t.Errorf("firecracker state_dir = %q, want /var/lib/wp/fc", fc.StateDir)
	}
	if fc.AgentPort == 0 {
		t.Error("firecracker defaults not filled in")
	}
}

func TestLoadConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warmpool.yaml")
	if err := os.WriteFile(path, []byte(validConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err != nil {
		t.Errorf("LoadConfig: %v", err)
	}

	_, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("LoadConfig(missing) error = %v, want one naming the file", err)
	}
}

func TestExampleConfigsParse(t *testing.T) {
	for _, name := range []string{"warmpool-sim.yaml", "warmpool.yaml"} {
		path := filepath.Join("..", "examples", name)
		if _, err := os.Stat(path); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, err := LoadConfig(path); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseConfigResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	text := "provider: {kind: sim}\nlisten: {socket: run/wp.sock}\nstate_dir: state\n" +
		"stacks:\n  - key: {name: a, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: snaps/a}\n" +
		"  - key: {name: b, version: \"1\", vcpus: 1, memory_mib: 64}\n    snapshot: {path: sim://b}\n"
	cfg, err := ParseConfig(filepath.Join(dir, "warmpool.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "run/wp.sock"); cfg.Listen.Socket != want {
		t.Errorf("listen.socket = %q, want %q", cfg.Listen.Socket, want)
	}
	if want := filepath.Join(dir, "state"); cfg.StateDir != want {
		t.Errorf("state_dir = %q, want %q", cfg.StateDir, want)
	}
	if want := filepath.Join(dir, "snaps/a"); cfg.Stacks[0].Snapshot.Path != want {
		t.Errorf("stacks[0].snapshot.path = %q, want %q", cfg.Stacks[0].Snapshot.Path, want)
	}
	if got := cfg.Stacks[1].Snapshot.Path; got != "sim://b" {
		t.Errorf("stacks[1].snapshot.path = %q, want sim://b unchanged", got)
	}
}
