package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/pool"
)

func TestShutdownStopsRefillsFirst(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)

	// A request whose body never arrives keeps the HTTP server's shutdown
	// waiting, which used to keep the refiller restoring meanwhile.
	conn, err := net.Dial("unix", td.config().Listen.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /v1/acquire HTTP/1.1\r\nHost: warmpool\r\nContent-Length: 100\r\n\r\n{")
	time.Sleep(50 * time.Millisecond) // let the server read the headers

	done := make(chan struct{})
	go func() {
		td.Shutdown(context.Background())
		close(done)
	}()

	deadline := time.Now().Add(3 * time.Second)
	for {
		handle, err := td.pool.Acquire(context.Background(), testKey)
		if errors.Is(err, pool.ErrClosed) {
			break
		}
		if err == nil {
			td.sim.Destroy(context.Background(), handle.Instance)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool still open 3s after shutdown began: Acquire returned %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn.Close()
	<-done
}

func TestCancelledRestoreLoggedAtInfo(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	err := fmt.Errorf("sim: restore py-1: %w", context.Canceled)
	td.logHooks().RestoreFailed("py-1", testKey, err, time.Millisecond, 0)

	logs := td.logs.String()
	if !strings.Contains(logs, `level=INFO msg="restore cancelled by shutdown" vm_id=py-1`) {
		t.Errorf("cancelled restore not logged at info:\n%s", logs)
	}
	if strings.Contains(logs, `msg="restore failed" vm_id=py-1`) {
		t.Errorf("cancelled restore logged as a failure:\n%s", logs)
	}
}
