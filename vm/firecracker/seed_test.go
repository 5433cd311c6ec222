package firecracker

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
)

// seedFileName is the file, relative to each VM directory, in which the
// emulated agent records the last seed it accepted.
const seedFileName = "seed.hex"

// readSeed returns the seed that the emulated agent of inst accepted.
func readSeed(t *testing.T, inst vm.Instance) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(inst.Dir, seedFileName))
	if err != nil {
		t.Fatalf("%s received no seed: %v", inst.ID, err)
	}
	seed, err := vsockproto.ParseSeed(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("%s seed %q: %v", inst.ID, data, err)
	}
	return seed
}

// readGuestRandom sends RAND to the agent of inst and returns the reply.
func readGuestRandom(t *testing.T, p *Provider, inst vm.Instance) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	agent, closeConn, err := dialAgent(ctx, filepath.Join(inst.Dir, vsockName), p.cfg.AgentPort)
	if err != nil {
		t.Fatalf("connect to the agent of %s: %v", inst.ID, err)
	}
	defer closeConn()
	b, err := agent.Random()
	if err != nil {
		t.Fatalf("rand from %s: %v", inst.ID, err)
	}
	return b
}

func TestRestoreClonesGetDifferentSeeds(t *testing.T) {
	p := newTestProvider(t, testConfig(t, fcemu.EnvSeedFile+"="+seedFileName))
	snap := makeTemplate(t, p, "seeds", "")
	insts := restoreClones(t, p, snap, 2)
	defer destroyAll(t, p, insts)
	if t.Failed() {
		return
	}

	first, second := readSeed(t, insts[0]), readSeed(t, insts[1])
	if len(first) != vsockproto.MinSeedSize {
		t.Errorf("seed has %d bytes, want %d", len(first), vsockproto.MinSeedSize)
	}
	if bytes.Equal(first, second) {
		t.Errorf("both clones received the seed %x", first)
	}
	// The emulated guests start from the snapshot's RNG state, so they
	// read the same bytes unless the reseed reached them.
	if a, b := readGuestRandom(t, p, insts[0]), readGuestRandom(t, p, insts[1]); bytes.Equal(a, b) {
		t.Errorf("both clones read the random bytes %x", a)
	}
}

func TestRestoreReseedFailureCleansUp(t *testing.T) {
	p := newTestProvider(t, testConfig(t))
	snap := makeTemplate(t, p, "badseed", "")
	p.cfg.Env = append(p.cfg.Env, fcemu.EnvReseedError+"=RNDRESEEDCRNG: operation not permitted")

	_, err := p.Restore(context.Background(), "badseed-0", testStack, snap)
	if err == nil {
		t.Fatal("restore succeeded although the guest rejected the seed")
	}
	if !strings.Contains(err.Error(), "reseed guest RNG") {
		t.Errorf("error does not name the reseed: %v", err)
	}
	if !strings.Contains(err.Error(), "RNDRESEEDCRNG: operation not permitted") {
		t.Errorf("error does not carry the guest's message: %v", err)
	}
	if got := p.SnapshotRefs(snap.Path); got != 0 {
		t.Errorf("snapshot refs = %d, want 0", got)
	}
	checkNothingLeft(t, p)
}
