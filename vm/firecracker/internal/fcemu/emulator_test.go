package fcemu

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/vm/firecracker/api"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

// specPath is the API description's path, located from the package directory
// when the test binary starts, because some tests change the working
// directory before they create an emulator.
var specPath = func() string {
	wd, _ := os.Getwd()
	return fcspec.Locate(wd)
}()

func newTestEmulator(t *testing.T, version string) *Emulator {
	t.Helper()
	return newTestEmulatorWith(t, version, func(*Options) {})
}

// newTestEmulatorWith returns an emulator of version whose options set
// changes first.
func newTestEmulatorWith(t *testing.T, version string, set func(*Options)) *Emulator {
	t.Helper()
	path := specPath
	if path == "" {
		testenv.Skipf(t, "Firecracker API description not found: set %s to the path of firecracker-api.yaml", fcspec.EnvVar)
	}
	spec, err := fcspec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Spec: spec, Version: version, AgentPort: 1, HeartbeatPort: 2}
	set(&opts)
	emu, err := New(opts, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emu.Close)
	return emu
}

// call sends one request and returns the status and fault message.
func call(emu *Emulator, method, path string, body any) (int, string) {
	data, _ := json.Marshal(body)
	req := httptest.NewRequest(method, "http://localhost"+path, strings.NewReader(string(data)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	emu.ServeHTTP(rec, req)
	var fault api.Fault
	json.Unmarshal(rec.Body.Bytes(), &fault)
	return rec.Code, fault.FaultMessage
}

func expect(t *testing.T, emu *Emulator, method, path string, body any, wantStatus int, wantFault string) {
	t.Helper()
	status, fault := call(emu, method, path, body)
	if status != wantStatus {
		t.Errorf("%s %s: status %d (%s), want %d", method, path, status, fault, wantStatus)
	}
	if !strings.Contains(fault, wantFault) {
		t.Errorf("%s %s: fault %q does not contain %q", method, path, fault, wantFault)
	}
}

// bootedEmulator returns an emulator running a configured VM, working in
// a temporary directory.
func bootedEmulator(t *testing.T) *Emulator {
	t.Helper()
	t.Chdir(t.TempDir())
	os.WriteFile("vmlinux", []byte("k"), 0o644)
	emu := newTestEmulator(t, "1.16.1")
	expect(t, emu, "PUT", "/machine-config", api.MachineConfig{VCPUCount: 1, MemSizeMiB: 16}, 204, "")
	expect(t, emu, "PUT", "/boot-source", api.BootSource{KernelImagePath: "vmlinux"}, 204, "")
	expect(t, emu, "PUT", "/actions", api.Action{ActionType: api.ActionInstanceStart}, 204, "")
	return emu
}

func TestEmulatorRejectsInvalidRequest(t *testing.T) {
	emu := newTestEmulator(t, "1.16.1")
	expect(t, emu, "PUT", "/machine-config", map[string]any{"vcpu_count": 64, "mem_size_mib": 128}, 400, "invalid request")
	expect(t, emu, "PUT", "/vsock", map[string]any{"uds_path": "v"}, 400, "guest_cid")
	expect(t, emu, "PUT", "/no-such-path", map[string]any{}, 400, "invalid request")
}

func TestEmulatorPreBootOnlyBeforeStart(t *testing.T) {
	emu := bootedEmulator(t)
	expect(t, emu, "PUT", "/machine-config", api.MachineConfig{VCPUCount: 1, MemSizeMiB: 16}, 400, "after starting")
	expect(t, emu, "PUT", "/actions", api.Action{ActionType: api.ActionInstanceStart}, 400, "already running")
}

func TestEmulatorSnapshotNeedsPause(t *testing.T) {
	emu := bootedEmulator(t)
	create := api.SnapshotCreate{SnapshotPath: "state", MemFilePath: "mem"}
	expect(t, emu, "PUT", "/snapshot/create", create, 400, "paused")
	expect(t, emu, "PATCH", "/vm", api.VMState{State: api.VMPaused}, 204, "")
	expect(t, emu, "PUT", "/snapshot/create", create, 204, "")

	info, err := os.Stat("mem")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != 16<<20 {
		t.Errorf("memory file has %d bytes, want %d", info.Size(), 16<<20)
	}
}

func TestEmulatorLoadRules(t *testing.T) {
	emu := bootedEmulator(t)
	expect(t, emu, "PATCH", "/vm", api.VMState{State: api.VMPaused}, 204, "")
	expect(t, emu, "PUT", "/snapshot/create", api.SnapshotCreate{SnapshotPath: "state", MemFilePath: "mem"}, 204, "")
	dir, _ := os.Getwd()

	// A process that was configured cannot load.
	configured := newTestEmulator(t, "1.16.1")
	expect(t, configured, "PUT", "/machine-config", api.MachineConfig{VCPUCount: 1, MemSizeMiB: 16}, 204, "")
	expect(t, configured, "PUT", "/snapshot/load", api.SnapshotLoad{SnapshotPath: "state", MemFilePath: "mem"}, 400, "not allowed after configuring")

	fresh := newTestEmulator(t, "1.16.1")
	both := map[string]any{"snapshot_path": "state", "mem_file_path": "mem",
		"mem_backend": map[string]any{"backend_type": "File", "backend_path": "mem"}}
	expect(t, fresh, "PUT", "/snapshot/load", both, 400, "exactly one")
	expect(t, fresh, "PUT", "/snapshot/load", map[string]any{"snapshot_path": "state"}, 400, "exactly one")

	old := newTestEmulator(t, "1.11.0")
	withOverride := api.SnapshotLoad{SnapshotPath: "state", MemFilePath: "mem",
		NetworkOverrides: []api.NetworkOverride{{IfaceID: "eth0", HostDevName: "t"}}}
	expect(t, old, "PUT", "/snapshot/load", withOverride, 400, "network_overrides")

	load := api.SnapshotLoad{SnapshotPath: filepath.Join(dir, "state"),
		MemBackend: &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: "mem"}, ResumeVM: true}
	expect(t, fresh, "PUT", "/snapshot/load", load, 204, "")
	expect(t, fresh, "PUT", "/snapshot/load", load, 400, "not allowed")
	expect(t, fresh, "PUT", "/boot-source", api.BootSource{KernelImagePath: "vmlinux"}, 400, "loading a snapshot")

	status, _ := call(fresh, "GET", "/", nil)
	if status != http.StatusOK {
		t.Errorf("GET / status %d", status)
	}
	if got := fresh.describe().State; got != api.StateRunning {
		t.Errorf("state after load with resume = %q, want %q", got, api.StateRunning)
	}
}

func TestEmulatorLoadChecksMemorySize(t *testing.T) {
	emu := bootedEmulator(t)
	expect(t, emu, "PATCH", "/vm", api.VMState{State: api.VMPaused}, 204, "")
	expect(t, emu, "PUT", "/snapshot/create", api.SnapshotCreate{SnapshotPath: "state", MemFilePath: "mem"}, 204, "")
	os.Truncate("mem", 1<<20)

	fresh := newTestEmulator(t, "1.16.1")
	expect(t, fresh, "PUT", "/snapshot/load", api.SnapshotLoad{SnapshotPath: "state", MemFilePath: "mem"}, 400, "has 1048576 bytes")
}

func TestFaultProbabilityFromEnv(t *testing.T) {
	if specPath == "" {
		testenv.Skipf(t, "Firecracker API description not found: set %s to the path of firecracker-api.yaml", fcspec.EnvVar)
	}
	t.Setenv(EnvSpec, specPath)
	for _, tc := range []struct {
		value string
		want  float64
	}{{"", 1}, {"0", 0}, {"0.25", 0.25}} {
		t.Setenv(EnvFaultProbability, tc.value)
		opts, err := OptionsFromEnv()
		if err != nil {
			t.Fatalf("%s=%q: %v", EnvFaultProbability, tc.value, err)
		}
		if opts.FaultProbability != tc.want {
			t.Errorf("%s=%q: probability %v, want %v", EnvFaultProbability, tc.value, opts.FaultProbability, tc.want)
		}
	}
	t.Setenv(EnvFaultProbability, "1.5")
	if _, err := OptionsFromEnv(); err == nil {
		t.Errorf("%s=1.5 accepted", EnvFaultProbability)
	}
}
