package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

// emulatorBin is the emulator built by TestMain under the name
// "firecracker"; jailerBin is a link to it named "jailer". Both are empty
// when the API description is missing, and the tests that need them skip.
var (
	emulatorBin string
	jailerBin   string
	buildRoot   string
	skipReason  string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Getenv(helperEnv) != "" {
		return runRestoreHelper()
	}
	wd, _ := os.Getwd()
	spec := fcspec.Locate(wd)
	if spec == "" {
		skipReason = fmt.Sprintf("Firecracker API description not found: set %s to the path of firecracker-api.yaml", fcspec.EnvVar)
		return m.Run()
	}
	abs, err := filepath.Abs(spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv(fcemu.EnvSpec, abs)

	buildRoot, err = os.MkdirTemp("", "fcemu-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(buildRoot)

	emulatorBin = filepath.Join(buildRoot, "firecracker")
	// Static, so that the jailer mode can run it inside a bare chroot.
	build := exec.Command("go", "build", "-o", emulatorBin, "./internal/fcemu/cmd/fcemu")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build emulator: %v\n%s", err, out)
		return 1
	}
	jailerBin = filepath.Join(buildRoot, "jailer")
	if err := os.Symlink(emulatorBin, jailerBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// shortTempDir returns a temporary directory with a short path, because
// unix socket paths are built under it and t.TempDir names are long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func requireEmulator(t *testing.T) {
	t.Helper()
	if emulatorBin == "" {
		testenv.Skipf(t, "%s", skipReason)
	}
	if os.Geteuid() != 0 {
		testenv.Skipf(t, "the emulator opens TAP devices and network namespaces: run the tests as root")
	}
}

// testConfig returns a provider configuration that runs the emulator with
// short timeouts and fast heartbeats, plus env as extra emulator settings.
func testConfig(t *testing.T, env ...string) Config {
	t.Helper()
	requireEmulator(t)
	return Config{
		FirecrackerBin:   emulatorBin,
		StateDir:         shortTempDir(t),
		HeartbeatTimeout: time.Second,
		HealthTimeout:    3 * time.Second,
		SocketTimeout:    3 * time.Second,
		APITimeout:       2 * time.Second,
		Env:              append([]string{fcemu.EnvHeartbeatInterval + "=50ms", fcemu.EnvBootDelay + "=20ms"}, env...),
	}
}

func newTestProvider(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var testStack = vm.StackKey{Name: "py", Version: "1", VCPUs: 2, MemoryMiB: 64}

// makeTemplate writes a kernel and rootfs file and snapshots a template VM
// with one network interface named tap.
func makeTemplate(t *testing.T, p *Provider, id, tap string) vm.Snapshot {
	t.Helper()
	files := shortTempDir(t)
	kernel := filepath.Join(files, "vmlinux")
	rootfs := filepath.Join(files, "rootfs.ext4")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.WriteFile(rootfs, []byte("rootfs image"), 0o644)

	spec := TemplateSpec{
		ID:          id,
		SnapshotDir: filepath.Join(shortTempDir(t), "snapshots"),
		Stack:       testStack,
		KernelImage: kernel,
		BootArgs:    "console=ttyS0",
		Drives:      []TemplateDrive{{DriveID: "rootfs", Path: rootfs, Root: true}},
		Network:     nil,
		Entropy:     true,
	}
	if tap != "" {
		spec.Network = append(spec.Network, netIface("eth0", tap))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	snap, err := p.Template(ctx, spec)
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	return snap
}

// uniqueTAP returns a TAP name no other test run uses.
func uniqueTAP(t *testing.T) string {
	return fmt.Sprintf("wpt%d%d", os.Getpid()%100000, time.Now().UnixNano()%10000)
}

// processesUnder lists pids whose executable lies under one of dirs.
func processesUnder(dirs ...string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		for _, d := range dirs {
			if d != "" && strings.HasPrefix(exe, d) {
				found = append(found, e.Name()+" "+exe)
			}
		}
	}
	return found
}

// checkNothingLeft fails if a VMM process or VM directory of p remains.
func checkNothingLeft(t *testing.T, p *Provider) {
	t.Helper()
	dirs := []string{emulatorBin, p.cfg.StateDir}
	if p.cfg.Jailer != nil {
		dirs = append(dirs, p.cfg.Jailer.ChrootBaseDir)
	}
	// A killed process is reaped before Destroy returns, so nothing waits.
	if procs := processesUnder(dirs...); len(procs) > 0 {
		t.Errorf("VMM processes left: %v", procs)
	}
	entries, _ := os.ReadDir(filepath.Join(p.cfg.StateDir, "vms"))
	for _, e := range entries {
		t.Errorf("VM directory left: %s", e.Name())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.vms) != 0 {
		t.Errorf("provider still tracks %d VMs", len(p.vms))
	}
}

func netIface(id, tap string) api.NetworkInterface {
	return api.NetworkInterface{IfaceID: id, HostDevName: tap, GuestMAC: "06:00:ac:10:00:02"}
}
