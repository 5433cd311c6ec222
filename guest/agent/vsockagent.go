//go:build linux

package main

import (
	"errors"
	"io"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// streamConn is a connection of the vsock channel. *os.File over a vsock
// socket implements it, and so does net.Conn, which the tests use.
type streamConn interface {
	io.ReadWriteCloser
	SetWriteDeadline(time.Time) error
}

// serveAgentPort accepts host connections with accept and replies to the
// requests on each of them in its own goroutine. It returns the error that ends accept.
// A snapshot restore resets every open connection, which ends only that
// connection's goroutine.
func serveAgentPort(accept func() (streamConn, error)) error {
	for {
		conn, err := accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			if err := vsockproto.Serve(conn, rngHandlers); err != nil {
				logf("agent connection: %v", err)
			}
		}()
	}
}

// heartbeatSender keeps one connection to the host's heartbeat port and
// writes a heartbeat on it at every tick.
type heartbeatSender struct {
	dial    func() (streamConn, error)
	timeout time.Duration // bounds each write
	conn    streamConn    // nil while disconnected
	seq     uint64
	// connected is the state last logged, so that a host that stays away
	// gets one line in the log instead of one per tick.
	connected bool
}

// run sends a heartbeat at every tick until stop is closed.
func (h *heartbeatSender) run(ticks <-chan time.Time, stop <-chan struct{}) {
	defer h.disconnect()
	for {
		select {
		case <-stop:
			return
		case <-ticks:
		}
		h.beat()
	}
}

// beat writes the next heartbeat, dialing first when there is no
// connection. A write on an existing connection that fails, as every one
// does after a snapshot restore, is retried once on a new connection, so
// the host misses no tick.
func (h *heartbeatSender) beat() {
	h.seq++
	reused := h.conn != nil
	err := h.write()
	if err != nil && reused {
		err = h.write()
	}
	switch {
	case err != nil && h.connected:
		logf("heartbeat connection lost: %v", err)
	case err == nil && !h.connected:
		logf("heartbeat connection open")
	}
	h.connected = err == nil
}

func (h *heartbeatSender) write() error {
	if h.conn == nil {
		conn, err := h.dial()
		if err != nil {
			return err
		}
		h.conn = conn
	}
	err := h.conn.SetWriteDeadline(time.Now().Add(h.timeout))
	if err == nil {
		err = vsockproto.WriteHeartbeat(h.conn, h.seq)
	}
	if err != nil {
		h.disconnect()
	}
	return err
}

func (h *heartbeatSender) disconnect() {
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
}

// runVsock speaks the vsock protocol. It replies to pings on agentPort and
// sends heartbeats to the host on heartbeatPort. It returns only when the
// listening socket fails.
func runVsock(agentPort, heartbeatPort uint32) error {
	ln, err := listenVsock(agentPort)
	if err != nil {
		return err
	}
	logf("ready on vsock port %d, heartbeats to host port %d", agentPort, heartbeatPort)

	hb := &heartbeatSender{
		dial:    func() (streamConn, error) { return dialVsock(vsockproto.HostCID, heartbeatPort) },
		timeout: time.Second,
	}
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()
	stop := make(chan struct{})
	defer close(stop)
	go hb.run(ticker.C, stop)

	err = serveAgentPort(ln.accept)
	if err == nil {
		err = errors.New("listener closed")
	}
	return err
}
