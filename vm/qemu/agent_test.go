package qemu

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// startFakeGuest serves the agent protocol on a unix socket with reply,
// which maps each request line to its reply, and returns the lines it
// received.
func startFakeGuest(t *testing.T, reply func(line string) string) (*agentConn, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	lines := make(chan string, 16)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		scanner := bufio.NewScanner(conn)
		for scanner.Scan() {
			lines <- scanner.Text()
			conn.Write([]byte(reply(scanner.Text()) + "\n"))
		}
	}()
	a, err := dialAgent(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a, lines
}

func TestAgentSeedSendsFreshBytes(t *testing.T) {
	a, lines := startFakeGuest(t, func(line string) string {
		fields := strings.Fields(line)
		return "seeded " + fields[1]
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var seeds []string
	for range 2 {
		if err := a.seed(ctx); err != nil {
			t.Fatalf("seed: %v", err)
		}
		fields := strings.Fields(<-lines)
		if len(fields) != 3 || fields[0] != "seed" {
			t.Fatalf("request %q, want seed TOKEN HEX", fields)
		}
		if _, err := vsockproto.ParseSeed(fields[2]); err != nil {
			t.Errorf("seed argument %q: %v", fields[2], err)
		}
		seeds = append(seeds, fields[2])
	}
	if seeds[0] == seeds[1] {
		t.Errorf("two seeds are equal: %s", seeds[0])
	}
}

func TestAgentSeedReportsGuestError(t *testing.T) {
	a, _ := startFakeGuest(t, func(line string) string {
		return "error " + strings.Fields(line)[1] + " RNDRESEEDCRNG: operation not permitted"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.seed(ctx)
	if err == nil || !strings.Contains(err.Error(), "RNDRESEEDCRNG: operation not permitted") {
		t.Errorf("seed = %v, want the guest's error", err)
	}
}
