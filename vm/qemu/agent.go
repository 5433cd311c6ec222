package qemu

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
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
	// waiters receive the reply line whose second word is their token.
	waiters map[string]chan string
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
		waiters:   map[string]chan string{},
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

		line := scanner.Text()
		verb, rest, _ := strings.Cut(line, " ")
		if verb != "pong" && verb != "seeded" && verb != "rand" && verb != "error" {
			continue
		}
		token, _, _ := strings.Cut(rest, " ")
		a.mu.Lock()
		waiter := a.waiters[token]
		delete(a.waiters, token)
		a.mu.Unlock()
		if waiter != nil {
			waiter <- line // buffered, and each token gets one reply
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
	_, err := a.request(ctx, "ping", "")
	return err
}

// seed sends host randomness to the guest, which mixes it into its kernel
// RNG and forces a reseed, and waits for the guest's acknowledgement.
// Every clone starts with the template's RNG state, so without this two
// clones would produce the same random bytes.
func (a *agentConn) seed(ctx context.Context) error {
	b := make([]byte, vsockproto.MinSeedSize)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("agent: seed: %w", err)
	}
	_, err := a.request(ctx, "seed", hex.EncodeToString(b))
	return err
}

// random returns vsockproto.RandomSize bytes that the guest read from its
// kernel RNG.
func (a *agentConn) random(ctx context.Context) ([]byte, error) {
	arg, err := a.request(ctx, "rand", "")
	if err != nil {
		return nil, err
	}
	b, err := hex.DecodeString(arg)
	if err != nil || len(b) != vsockproto.RandomSize {
		return nil, fmt.Errorf("agent: invalid rand reply %q", arg)
	}
	return b, nil
}

// request sends "VERB TOKEN ARG" and returns the argument of the guest's
// reply with the same token. A reply "error TOKEN MESSAGE" becomes an
// error.
func (a *agentConn) request(ctx context.Context, verb, arg string) (string, error) {
	a.mu.Lock()
	a.nextToken++
	token := strconv.FormatUint(a.nextToken, 10)
	waiter := make(chan string, 1)
	a.waiters[token] = waiter
	a.mu.Unlock()

	defer func() {
		a.mu.Lock()
		delete(a.waiters, token)
		a.mu.Unlock()
	}()

	line := verb + " " + token
	if arg != "" {
		line += " " + arg
	}
	if deadline, ok := ctx.Deadline(); ok {
		a.conn.SetWriteDeadline(deadline)
	}
	if _, err := a.conn.Write([]byte(line + "\n")); err != nil {
		return "", fmt.Errorf("agent: send %s: %w", verb, err)
	}

	select {
	case reply := <-waiter:
		replyVerb, rest, _ := strings.Cut(reply, " ")
		_, replyArg, _ := strings.Cut(rest, " ")
		if replyVerb == "error" {
			return "", fmt.Errorf("agent: %s failed in the guest: %s", verb, replyArg)
		}
		return replyArg, nil
	case <-a.closed:
		return "", fmt.Errorf("agent: %w", a.readErr)
	case <-ctx.Done():
		return "", fmt.Errorf("agent: no reply to %s from the guest: %w", verb, ctx.Err())
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
