package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// heartbeatInterval is how often the guest agent sends "hb SEQ".
const heartbeatInterval = 100 * time.Millisecond

// agentConn is the host end of the guest agent's serial port, reached
// through QEMU's socket chardev. A reader goroutine records the time of
// every line from the guest, so that Check reads the heartbeat age without
// any I/O.
type agentConn struct {
	conn net.Conn

	// lastLine is the time of the last line from the guest, in Unix
	// nanoseconds, or zero before the first one.
	lastLine atomic.Int64
	// firstLine is closed when the first line arrives.
	firstLine chan struct{}
	// closed is closed when the connection fails, and readErr then holds
	// the reason.
	closed  chan struct{}
	readErr error

	mu        sync.Mutex // guards nextToken and waiters, and is never held during I/O
	nextToken uint64
	waiters   map[string]chan struct{}
}

func dialAgent(path string) (*agentConn, error) {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, fmt.Errorf("agent: dial %s: %w", path, err)
	}
	a := &agentConn{
		conn:      conn,
		firstLine: make(chan struct{}),
		closed:    make(chan struct{}),
		waiters:   map[string]chan struct{}{},
	}
	go a.readLines()
	return a, nil
}

func (a *agentConn) readLines() {
	scanner := bufio.NewScanner(a.conn)
	first := true
	for scanner.Scan() {
		a.lastLine.Store(time.Now().UnixNano())
		if first {
			close(a.firstLine)
			first = false
		}

		token, ok := strings.CutPrefix(scanner.Text(), "pong ")
		if !ok {
			continue
		}
		a.mu.Lock()
		waiter := a.waiters[token]
		delete(a.waiters, token)
		a.mu.Unlock()
		if waiter != nil {
			close(waiter)
		}
	}

	a.readErr = scanner.Err()
	if a.readErr == nil {
		a.readErr = errors.New("connection closed by qemu")
	}
	close(a.closed)
}

// waitReady waits for the guest's first line, which is "ready" after a
// boot and a heartbeat or pong after a restore.
func (a *agentConn) waitReady(ctx context.Context) error {
	select {
	case <-a.firstLine:
		return nil
	case <-a.closed:
		return fmt.Errorf("agent: %w", a.readErr)
	case <-ctx.Done():
		return fmt.Errorf("agent: no line from the guest: %w", ctx.Err())
	}
}

// ping sends "ping TOKEN" and waits for the matching pong.
func (a *agentConn) ping(ctx context.Context) error {
	a.mu.Lock()
	a.nextToken++
	token := strconv.FormatUint(a.nextToken, 10)
	waiter := make(chan struct{})
	a.waiters[token] = waiter
	a.mu.Unlock()

	defer func() {
		a.mu.Lock()
		delete(a.waiters, token)
		a.mu.Unlock()
	}()

	if deadline, ok := ctx.Deadline(); ok {
		a.conn.SetWriteDeadline(deadline)
	}
	if _, err := a.conn.Write([]byte("ping " + token + "\n")); err != nil {
		return fmt.Errorf("agent: send ping: %w", err)
	}

	select {
	case <-waiter:
		return nil
	case <-a.closed:
		return fmt.Errorf("agent: %w", a.readErr)
	case <-ctx.Done():
		return fmt.Errorf("agent: no pong from the guest: %w", ctx.Err())
	}
}

// heartbeatAge returns how long ago the guest sent its last line.
func (a *agentConn) heartbeatAge(now time.Time) (time.Duration, error) {
	select {
	case <-a.closed:
		return 0, fmt.Errorf("agent: %w", a.readErr)
	default:
	}
	last := a.lastLine.Load()
	if last == 0 {
		return 0, errors.New("agent: no heartbeat received yet")
	}
	return now.Sub(time.Unix(0, last)), nil
}

func (a *agentConn) close() {
	a.conn.Close()
}
