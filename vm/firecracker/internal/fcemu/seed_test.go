package fcemu

import (
	"bytes"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/guest/vsockproto"
	"github.com/warmpool/warmpool/vm/firecracker/api"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

// snapshotWithVsock boots a VM with a vsock device in a temporary working
// directory, snapshots it to "state" and "mem" there and returns the
// SnapshotLoad that restores it with its vsock socket at udsPath.
func snapshotWithVsock(t *testing.T) func(udsPath string) api.SnapshotLoad {
	t.Helper()
	t.Chdir(shortTempDir(t))
	os.WriteFile("vmlinux", []byte("k"), 0o644)
	emu := newTestEmulator(t, "1.16.1")
	expect(t, emu, "PUT", "/machine-config", api.MachineConfig{VCPUCount: 1, MemSizeMiB: 16}, 204, "")
	expect(t, emu, "PUT", "/boot-source", api.BootSource{KernelImagePath: "vmlinux"}, 204, "")
	expect(t, emu, "PUT", "/vsock", api.Vsock{GuestCID: 3, UDSPath: "template.sock"}, 204, "")
	expect(t, emu, "PUT", "/actions", api.Action{ActionType: api.ActionInstanceStart}, 204, "")
	expect(t, emu, "PATCH", "/vm", api.VMState{State: api.VMPaused}, 204, "")
	expect(t, emu, "PUT", "/snapshot/create", api.SnapshotCreate{SnapshotPath: "state", MemFilePath: "mem"}, 204, "")
	return func(udsPath string) api.SnapshotLoad {
		return api.SnapshotLoad{SnapshotPath: "state", MemFilePath: "mem", ResumeVM: true,
			VsockOverride: &api.VsockOverride{UDSPath: udsPath}}
	}
}

// shortTempDir returns a temporary directory with a short path, because
// the vsock sockets are created in it.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcemu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// connectAgent connects to the emulated agent on port 1 behind udsPath.
func connectAgent(t *testing.T, udsPath string) *vsockproto.HostConn {
	t.Helper()
	conn, err := net.Dial("unix", udsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	agent, err := vsockproto.Connect(conn, 1)
	if err != nil {
		t.Fatal(err)
	}
	return agent
}

func readRandom(t *testing.T, agent *vsockproto.HostConn) []byte {
	t.Helper()
	b, err := agent.Random()
	if err != nil {
		t.Fatalf("rand: %v", err)
	}
	return b
}

func TestClonesShareRNGUntilReseeded(t *testing.T) {
	load := snapshotWithVsock(t)
	var agents []*vsockproto.HostConn
	var emus []*Emulator
	for _, sock := range []string{"a.sock", "b.sock"} {
		emu := newTestEmulator(t, "1.16.1")
		expect(t, emu, "PUT", "/snapshot/load", load(sock), 204, "")
		emus = append(emus, emu)
		agents = append(agents, connectAgent(t, sock))
	}

	first, second := readRandom(t, agents[0]), readRandom(t, agents[1])
	if !bytes.Equal(first, second) {
		t.Errorf("clones without a reseed read different bytes %x and %x, want equal", first, second)
	}
	if seed := emus[0].LastSeed(); seed != nil {
		t.Errorf("last seed before any SEED = %x, want none", seed)
	}

	seeds := [][]byte{bytes.Repeat([]byte{1}, vsockproto.MinSeedSize), bytes.Repeat([]byte{2}, vsockproto.MinSeedSize)}
	for i, agent := range agents {
		if err := agent.Seed(seeds[i]); err != nil {
			t.Fatalf("seed clone %d: %v", i, err)
		}
		if got := emus[i].LastSeed(); !bytes.Equal(got, seeds[i]) {
			t.Errorf("clone %d last seed = %x, want %x", i, got, seeds[i])
		}
	}
	first, second = readRandom(t, agents[0]), readRandom(t, agents[1])
	if bytes.Equal(first, second) {
		t.Errorf("reseeded clones read the same bytes %x", first)
	}
	if again := readRandom(t, agents[0]); bytes.Equal(again, first) {
		t.Errorf("two reads of one clone returned the same bytes %x", again)
	}
}

func TestReseedErrorRepliesError(t *testing.T) {
	load := snapshotWithVsock(t)
	emu := newTestEmulatorWith(t, "1.16.1", func(o *Options) {
		o.ReseedError = "RNDRESEEDCRNG: operation not permitted"
	})
	expect(t, emu, "PUT", "/snapshot/load", load("a.sock"), 204, "")
	agent := connectAgent(t, "a.sock")

	err := agent.Seed(make([]byte, vsockproto.MinSeedSize))
	if err == nil {
		t.Fatal("seed succeeded although the agent is set to fail it")
	}
	if !strings.Contains(err.Error(), `"ERROR RNDRESEEDCRNG: operation not permitted"`) {
		t.Errorf("seed error = %v, want the ERROR reply", err)
	}
	if seed := emu.LastSeed(); seed != nil {
		t.Errorf("last seed after a failed SEED = %x, want none", seed)
	}
	// The connection stays usable after the ERROR reply.
	if err := agent.Ping("after"); err != nil {
		t.Errorf("ping after a failed seed: %v", err)
	}
}

func TestSeedFileRecordsLastSeed(t *testing.T) {
	load := snapshotWithVsock(t)
	emu := newTestEmulatorWith(t, "1.16.1", func(o *Options) { o.SeedFile = "seed.hex" })
	expect(t, emu, "PUT", "/snapshot/load", load("a.sock"), 204, "")
	agent := connectAgent(t, "a.sock")

	for _, b := range []byte{7, 9} {
		seed := bytes.Repeat([]byte{b}, vsockproto.MinSeedSize)
		if err := agent.Seed(seed); err != nil {
			t.Fatalf("seed: %v", err)
		}
		data, err := os.ReadFile("seed.hex")
		if err != nil {
			t.Fatal(err)
		}
		got, err := vsockproto.ParseSeed(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatalf("seed file %q: %v", data, err)
		}
		if !bytes.Equal(got, seed) {
			t.Errorf("seed file = %x, want %x", got, seed)
		}
	}
}

func TestSeedOptionsFromEnv(t *testing.T) {
	if specPath == "" {
		testenv.Skipf(t, "Firecracker API description not found: set %s to the path of firecracker-api.yaml", fcspec.EnvVar)
	}
	t.Setenv(EnvSpec, specPath)
	t.Setenv(EnvReseedError, "no entropy")
	t.Setenv(EnvSeedFile, "seed.hex")
	opts, err := OptionsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if opts.ReseedError != "no entropy" {
		t.Errorf("ReseedError = %q, want %q", opts.ReseedError, "no entropy")
	}
	if opts.SeedFile != "seed.hex" {
		t.Errorf("SeedFile = %q, want %q", opts.SeedFile, "seed.hex")
	}
}
