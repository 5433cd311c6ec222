package firecracker

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// The guest agent protocol is in package vsockproto, which the guest agent
// in guest/agent shares. The host pings the agent through Firecracker's
// vsock socket. The agent connects to the host on the heartbeat port
// (Firecracker forwards it to "<vsock socket>_<port>") and writes a line at
// least once per heartbeat timeout. After each restore the host sends the
// agent a SEED and waits for SEEDED (see reseed).

// heartbeatListener accepts the guest's heartbeat connections and records
// the time of the last line received.
type heartbeatListener struct {
	ln   net.Listener
	last atomic.Int64 // unix nanoseconds of the last heartbeat, 0 before the first
	wg   sync.WaitGroup
}

// listenHeartbeats listens on path, replacing a stale socket file left by
// a previous owner. uid and gid, when not negative, become the socket's
// owner so a jailed Firecracker can connect to it.
func listenHeartbeats(path string, uid, gid int) (*heartbeatListener, error) {
	os.Remove(path)
	short, release, err := api.ShortSocketPath(path)
	if err != nil {
		return nil, fmt.Errorf("listen for heartbeats: %w", err)
	}
	ln, err := net.Listen("unix", short)
	release()
	if err != nil {
		return nil, fmt.Errorf("listen for heartbeats: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(path, uid, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen for heartbeats: %w", err)
		}
	}
	h := &heartbeatListener{ln: ln}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

func (h *heartbeatListener) accept() {
	defer h.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		conn, err := h.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			h.read(conn)
		}()
	}
}

func (h *heartbeatListener) read(conn net.Conn) {
	defer conn.Close()
	scanner := bufio.NewScanner(conn)
	for scanner.Scan() {
		h.last.Store(time.Now().UnixNano())
	}
}

// lastHeartbeat returns the time of the last heartbeat, zero before the first.
func (h *heartbeatListener) lastHeartbeat() time.Time {
	n := h.last.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// close stops accepting and waits for open connections to end. Connections
// end when the VMM exits, so call close after the process is gone, or the
// guest's connection keeps it waiting.
func (h *heartbeatListener) close() {
	h.ln.Close()
	h.wg.Wait()
}

// closeNow stops accepting without waiting for open connections.
func (h *heartbeatListener) closeNow() { h.ln.Close() }

var pingCounter atomic.Uint64

// dialAgent connects to the guest agent on port through the vsock socket
// at udsPath. The connection's deadline follows ctx, and closeConn ends it.
func dialAgent(ctx context.Context, udsPath string, port uint32) (agent *vsockproto.HostConn, closeConn func(), err error) {
	conn, err := api.DialUnix(ctx, udsPath)
	if err != nil {
		return nil, nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	closeConn = func() {
		stop()
		conn.Close()
	}
	agent, err = vsockproto.Connect(conn, port)
	if err != nil {
		closeConn()
		return nil, nil, err
	}
	return agent, closeConn, nil
}

// ping performs one agent round trip through the vsock socket at udsPath,
// bounded by ctx.
func ping(ctx context.Context, udsPath string, port uint32) error {
	agent, closeConn, err := dialAgent(ctx, udsPath, port)
	if err != nil {
		return fmt.Errorf("guest ping: %w", err)
	}
	defer closeConn()
	if err := agent.Ping(strconv.FormatUint(pingCounter.Add(1), 10)); err != nil {
		return fmt.Errorf("guest ping: %w", err)
	}
	return nil
}

// reseed sends the guest agent vsockproto.MinSeedSize fresh bytes from
// crypto/rand and waits for its SEEDED reply, bounded by ctx. Clones of
// one snapshot start with the same kernel RNG state, and this gives each
// its own. An ERROR reply, which the agent sends when the reseed failed,
// is returned as an error.
func reseed(ctx context.Context, udsPath string, port uint32) error {
	seed := make([]byte, vsockproto.MinSeedSize)
	rand.Read(seed) // Since Go 1.24 it never returns an error: it crashes the program instead.
	agent, closeConn, err := dialAgent(ctx, udsPath, port)
	if err != nil {
		return fmt.Errorf("reseed guest RNG: %w", err)
	}
	defer closeConn()
	if err := agent.Seed(seed); err != nil {
		return fmt.Errorf("reseed guest RNG: %w", err)
	}
	return nil
}

// waitHealthy pings until the guest replies or ctx ends, and returns the
// last ping error on timeout.
func waitHealthy(ctx context.Context, p *process, udsPath string, port uint32) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		last = ping(attempt, udsPath, port)
		cancel()
		if last == nil {
			return nil
		}
		if !p.alive() {
			return p.exitError()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest health check timed out: %w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
