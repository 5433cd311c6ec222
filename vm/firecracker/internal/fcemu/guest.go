package fcemu

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// maxAgentLine bounds a request line, as the real agent does, so a host
// that never sends a newline cannot make the guest buffer without limit.
const maxAgentLine = 4096

// guest emulates the vsock device together with the guest agent behind it.
// Host-initiated connections arrive on udsPath and start with
// "CONNECT <port>\n", which gets the reply "OK <host port>\n" when the agent
// listens on that port. Requests after that go to vsockproto's guest side
// (Handlers.Reply), so the emulated agent replies as guest/agent does. The
// agent also dials udsPath_<HeartbeatPort> and sends heartbeats while the
// VM runs.
type guest struct {
	udsPath string
	opts    Options
	ln      net.Listener
	done    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	paused   bool
	hung     bool
	readyAt  time.Time
	rng      [rngKeySize]byte // emulated kernel RNG state, saved in snapshots
	lastSeed []byte           // seed of the last successful SEED, nil before
}

// rngKeySize is the size of the emulated kernel RNG state, the key size of
// the kernel's ChaCha20 CRNG.
const rngKeySize = sha256.Size

// startGuest starts the vsock device and agent. rng is the kernel RNG
// state the guest starts with: fresh for a boot, the snapshot's for a
// restore, so clones of one snapshot share it until they are reseeded.
func startGuest(udsPath string, bootDelay time.Duration, rng [rngKeySize]byte, opts Options) (*guest, error) {
	ln, err := net.Listen("unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	g := &guest{udsPath: udsPath, opts: opts, ln: ln, done: make(chan struct{}),
		readyAt: time.Now().Add(bootDelay), hung: opts.GuestHang, rng: rng}
	g.wg.Add(2)
	go g.accept()
	go g.sendHeartbeats()
	return g, nil
}

func (g *guest) stop() {
	close(g.done)
	g.ln.Close()
	g.wg.Wait()
}

func (g *guest) setPaused(paused bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.paused = paused
	g.mu.Unlock()
}

func (g *guest) hang() {
	g.mu.Lock()
	g.hung = true
	g.mu.Unlock()
}

// running reports whether the guest executes: booted, not paused, not hung.
func (g *guest) running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.paused && !g.hung && !time.Now().Before(g.readyAt)
}

// waitRunning blocks until the guest runs, or returns false when the
// emulator stops.
func (g *guest) waitRunning() bool {
	for !g.running() {
		select {
		case <-g.done:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

func (g *guest) accept() {
	defer g.wg.Done()
	for {
		conn, err := g.ln.Accept()
		if err != nil {
			return
		}
		go g.serveAgent(conn)
	}
}

func (g *guest) serveAgent(conn net.Conn) {
	defer conn.Close()
	go func() {
		<-g.done
		conn.Close()
	}()

	lines := bufio.NewScanner(conn)
	lines.Buffer(make([]byte, 0, 512), maxAgentLine)
	if !lines.Scan() {
		return
	}
	port, ok := strings.CutPrefix(strings.TrimSpace(lines.Text()), "CONNECT ")
	if !ok || port != strconv.FormatUint(uint64(g.opts.AgentPort), 10) {
		return // Firecracker closes a connection to a port without a listener.
	}
	if _, err := fmt.Fprintf(conn, "OK %d\n", 1<<30); err != nil {
		return
	}

	handlers := vsockproto.Handlers{Reseed: g.reseed, Random: g.random}
	for lines.Scan() {
		// A paused, booting or hung guest reads nothing, so the host
		// waits for the reply.
		if !g.waitRunning() {
			return
		}
		reply, ok := handlers.Reply(strings.TrimSpace(lines.Text()))
		if !ok {
			continue // The real agent skips lines that are no request.
		}
		if _, err := fmt.Fprintf(conn, "%s\n", reply); err != nil {
			return
		}
	}
}

// reseed mixes seed into the emulated kernel RNG and records it, or fails
// with Options.ReseedError when that is set. With Options.SeedFile set it
// also writes the seed there in hex, so a test outside the process can
// compare the seeds of two clones.
func (g *guest) reseed(seed []byte) error {
	if g.opts.ReseedError != "" {
		return errors.New(g.opts.ReseedError)
	}
	g.mu.Lock()
	g.rng = sha256.Sum256(append(g.rng[:], seed...))
	g.lastSeed = append([]byte(nil), seed...)
	g.mu.Unlock()
	if g.opts.SeedFile != "" {
		data := []byte(fmt.Sprintf("%x\n", seed))
		if err := os.WriteFile(g.opts.SeedFile, data, 0o600); err != nil {
			return fmt.Errorf("record seed: %w", err)
		}
	}
	return nil
}

// random returns vsockproto.RandomSize bytes derived from the emulated
// kernel RNG state and then advances the state. Two clones that read
// without a reseed in between return the same bytes, as real clones do.
func (g *guest) random() ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := sha256.Sum256(append([]byte("output"), g.rng[:]...))
	g.rng = sha256.Sum256(append([]byte("next"), g.rng[:]...))
	return out[:vsockproto.RandomSize], nil
}

// rngState returns the emulated kernel RNG state for a snapshot.
func (g *guest) rngState() [rngKeySize]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rng
}

// seed returns a copy of the last seed the agent accepted, nil before the
// first.
func (g *guest) seed() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]byte(nil), g.lastSeed...)
}

func (g *guest) sendHeartbeats() {
	defer g.wg.Done()
	path := g.udsPath + "_" + strconv.FormatUint(uint64(g.opts.HeartbeatPort), 10)
	ticker := time.NewTicker(g.opts.HeartbeatInterval)
	defer ticker.Stop()

	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var seq uint64
	for {
		select {
		case <-g.done:
			return
		case <-ticker.C:
		}
		if !g.running() {
			continue
		}
		if conn == nil {
			c, err := net.DialTimeout("unix", path, time.Second)
			if err != nil {
				continue // The host is not listening yet, or went away.
			}
			conn = c
		}
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		seq++
		if err := vsockproto.WriteHeartbeat(conn, seq); err != nil {
			conn.Close()
			conn = nil
		}
	}
}
