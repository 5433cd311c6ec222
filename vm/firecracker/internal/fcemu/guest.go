package fcemu

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// guest emulates the vsock device together with the guest agent behind it.
// Host-initiated connections arrive on udsPath and start with
// "CONNECT <port>\n", which gets the reply "OK <host port>\n" when the agent
// listens on that port. The agent also dials udsPath_<HeartbeatPort> and
// sends heartbeats while the VM runs.
type guest struct {
	udsPath string
	opts    Options
	ln      net.Listener
	done    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	paused  bool
	hung    bool
	readyAt time.Time
}

func startGuest(udsPath string, bootDelay time.Duration, opts Options) (*guest, error) {
	ln, err := net.Listen("unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	g := &guest{udsPath: udsPath, opts: opts, ln: ln, done: make(chan struct{}),
		readyAt: time.Now().Add(bootDelay), hung: opts.GuestHang}
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

	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	port, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
	if !ok || port != strconv.FormatUint(uint64(g.opts.AgentPort), 10) {
		return // Firecracker closes a connection to a port without a listener.
	}
	if _, err := fmt.Fprintf(conn, "OK %d\n", 1<<30); err != nil {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		token, ok := strings.CutPrefix(strings.TrimSpace(line), "PING")
		if !ok {
			fmt.Fprintf(conn, "ERROR unknown command\n")
			continue
		}
		if !g.waitRunning() {
			return
		}
		if _, err := fmt.Fprintf(conn, "PONG%s\n", token); err != nil {
			return
		}
	}
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
		if _, err := fmt.Fprintf(conn, "HEARTBEAT\n"); err != nil {
			conn.Close()
			conn = nil
		}
	}
}
