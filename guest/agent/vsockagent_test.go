//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// listenUnix listens on a unix socket in a temporary directory and closes
// it when the test ends.
func listenUnix(t *testing.T, name string) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

func acceptFrom(ln net.Listener) func() (streamConn, error) {
	return func() (streamConn, error) { return ln.Accept() }
}

// startFakeVsockDevice plays Firecracker's vsock device for host-initiated
// connections: each connection to the returned socket path starts with
// "CONNECT <port>". When port is the agent's port, the device connects to
// agentPath, replies "OK" and then copies bytes both ways.
func startFakeVsockDevice(t *testing.T, agentPath string, agentPort uint32) string {
	t.Helper()
	ln, path := listenUnix(t, "vsock.sock")
	go func() {
		for {
			host, err := ln.Accept()
			if err != nil {
				return
			}
			go spliceToAgent(host, agentPath, agentPort)
		}
	}()
	return path
}

func spliceToAgent(host net.Conn, agentPath string, agentPort uint32) {
	defer host.Close()
	// Read one byte at a time so that no byte after the CONNECT line
	// stays in a buffer here.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err := host.Read(b); err != nil {
			return
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if string(line) != fmt.Sprintf("CONNECT %d", agentPort) {
		return // Firecracker closes the connection when no guest socket listens on the port.
	}
	guest, err := net.Dial("unix", agentPath)
	if err != nil {
		return
	}
	defer guest.Close()
	if _, err := io.WriteString(host, "OK 1073741824\n"); err != nil {
		return
	}
	go io.Copy(guest, host)
	io.Copy(host, guest)
}

func TestServeAgentPortWithProviderClient(t *testing.T) {
	agentLn, agentPath := listenUnix(t, "agent.sock")
	served := make(chan error, 1)
	go func() { served <- serveAgentPort(acceptFrom(agentLn)) }()
	devicePath := startFakeVsockDevice(t, agentPath, vsockproto.DefaultAgentPort)

	// Two connections one after the other, as after a snapshot restore
	// resets the first one, and each with several pings.
	for round := range 2 {
		conn, err := net.Dial("unix", devicePath)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		host, err := vsockproto.Connect(conn, vsockproto.DefaultAgentPort)
		if err != nil {
			t.Fatalf("round %d: connect: %v", round, err)
		}
		for i := range 3 {
			if err := host.Ping(fmt.Sprintf("%d-%d", round, i)); err != nil {
				t.Errorf("round %d: ping %d: %v", round, i, err)
			}
		}
		conn.Close()
	}

	agentLn.Close()
	select {
	case err := <-served:
		if err == nil {
			t.Error("serveAgentPort returned nil after its listener closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serveAgentPort did not return after its listener closed")
	}
}

func TestConnectToOtherPortRejected(t *testing.T) {
	_, agentPath := listenUnix(t, "agent.sock")
	devicePath := startFakeVsockDevice(t, agentPath, vsockproto.DefaultAgentPort)

	conn, err := net.Dial("unix", devicePath)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := vsockproto.Connect(conn, 9999); err == nil {
		t.Error("connect to a port without a listener succeeded")
	}
}

// heartbeatHost accepts heartbeat connections and sends each line, tagged
// with the number of the connection it came on, to lines.
type heartbeatHost struct {
	ln    net.Listener
	path  string
	lines chan string

	mu    sync.Mutex // guards conns
	conns []net.Conn
}

func newHeartbeatHost(t *testing.T) *heartbeatHost {
	ln, path := listenUnix(t, "vsock.sock_10001")
	h := &heartbeatHost{ln: ln, path: path, lines: make(chan string, 16)}
	go func() {
		for n := 1; ; n++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, conn)
			h.mu.Unlock()
			go func() {
				scanner := bufio.NewScanner(conn)
				for scanner.Scan() {
					h.lines <- fmt.Sprintf("conn %d: %s", n, scanner.Text())
				}
			}()
		}
	}()
	t.Cleanup(h.closeConns)
	return h
}

// closeConns closes every accepted connection, as a snapshot restore
// resets the guest's connections.
func (h *heartbeatHost) closeConns() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

func (h *heartbeatHost) next(t *testing.T) string {
	t.Helper()
	select {
	case line := <-h.lines:
		return line
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat within 5s")
		return ""
	}
}

func (h *heartbeatHost) dial() (streamConn, error) { return net.Dial("unix", h.path) }

func TestHeartbeatReconnectsAfterReset(t *testing.T) {
	host := newHeartbeatHost(t)
	sender := &heartbeatSender{dial: host.dial, timeout: time.Second}
	defer sender.disconnect()

	sender.beat()
	sender.beat()
	if got, want := host.next(t), "conn 1: HEARTBEAT 1"; got != want {
		t.Errorf("first heartbeat = %q, want %q", got, want)
	}
	if got, want := host.next(t), "conn 1: HEARTBEAT 2"; got != want {
		t.Errorf("second heartbeat = %q, want %q", got, want)
	}

	// Closing a unix socket makes the peer's next write fail at once,
	// as a vsock write fails after a transport reset. The heartbeat that
	// meets the failure must go out on a new connection.
	host.closeConns()
	sender.beat()
	if got, want := host.next(t), "conn 2: HEARTBEAT 3"; got != want {
		t.Errorf("heartbeat after the reset = %q, want %q", got, want)
	}
}

func TestHeartbeatRetriesUntilHostListens(t *testing.T) {
	host := newHeartbeatHost(t)
	failures := 2
	dial := func() (streamConn, error) {
		if failures > 0 {
			failures--
			return nil, errors.New("connection reset by peer")
		}
		return host.dial()
	}
	sender := &heartbeatSender{dial: dial, timeout: time.Second}
	defer sender.disconnect()

	for range 3 {
		sender.beat()
	}
	if got, want := host.next(t), "conn 1: HEARTBEAT 3"; got != want {
		t.Errorf("first heartbeat received = %q, want %q", got, want)
	}
	if !sender.connected {
		t.Error("sender does not record the open connection")
	}
}

func TestHeartbeatRunStops(t *testing.T) {
	host := newHeartbeatHost(t)
	sender := &heartbeatSender{dial: host.dial, timeout: time.Second}
	ticks := make(chan time.Time)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		sender.run(ticks, stop)
		close(done)
	}()

	ticks <- time.Now()
	if got, want := host.next(t), "conn 1: HEARTBEAT 1"; got != want {
		t.Errorf("heartbeat = %q, want %q", got, want)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after stop was closed")
	}
	if sender.conn != nil {
		t.Error("run left its connection open")
	}
}
