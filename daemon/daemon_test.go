package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/sim"
)

var (
	testKey   = vm.StackKey{Name: "py", Version: "3.12", VCPUs: 1, MemoryMiB: 256}
	otherKey  = vm.StackKey{Name: "node", Version: "22", VCPUs: 2, MemoryMiB: 512}
	unusedKey = vm.StackKey{Name: "ruby", Version: "3", VCPUs: 1, MemoryMiB: 128}
)

// testConfig returns a config for dir with the two test stacks. The unix
// socket lives in a short directory of its own because socket paths are
// limited to about 108 bytes.
func testConfig(t testing.TB, dir string) string {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "wpd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	return fmt.Sprintf(`provider: {kind: sim}
pool:
  min_depth: 2
  max_depth: 3
  refill_interval: 10ms
  backoff_initial: 10ms
  backoff_max: 50ms
listen:
  socket: %s
state_dir: %s
shutdown_timeout: 5s
max_acquire_wait: 5s
stacks:
  - key: {name: py, version: "3.12", vcpus: 1, memory_mib: 256}
    snapshot: {path: sim://py}
  - key: {name: node, version: "22", vcpus: 2, memory_mib: 512}
    snapshot: {path: sim://node}
    min_depth: 1
    max_depth: 1
`, filepath.Join(sockDir, "wp.sock"), filepath.Join(dir, "state"))
}

// testDaemon is a daemon on the sim provider, started from a config file.
type testDaemon struct {
	*Daemon
	sim        *sim.Provider
	configPath string
	http       *http.Client
	logs       *syncBuffer
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeConfig(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startTestDaemon starts a daemon from configText with provider p (a new
// sim provider if nil) and stops it when the test ends.
func startTestDaemon(t testing.TB, configText string, p *sim.Provider) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	configPath := filepath.Join(dir, "warmpool.yaml")
	writeConfig(t, configPath, configText)
	cfg, err := LoadConfig(configPath)
	if err != nil {
		t.Fatal(err)
	}
	if p == nil {
		p, err = sim.New(sim.Config{})
		if err != nil {
			t.Fatal(err)
		}
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := Start(context.Background(), cfg, Options{ConfigPath: configPath, Logger: logger, Provider: p})
	if err != nil {
		t.Fatal(err)
	}
	td := &testDaemon{Daemon: d, sim: p, configPath: configPath, logs: logs,
		http: NewClient(cfg.Listen.Socket).http}
	t.Cleanup(func() {
		d.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs)
		}
	})
	return td
}

// do sends a raw request over the unix socket and returns the status and
// the body.
func (td *testDaemon) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://warmpool"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := td.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(data)
}

func (td *testDaemon) client() *Client {
	return NewClient(td.config().Listen.Socket)
}

func TestAcquireDestroyRoundTrip(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	client := td.client()
	ctx := context.Background()

	resp, err := client.Acquire(ctx, AcquireRequest{Stack: testKey, WaitMS: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Outcome != "hit" {
		t.Errorf("outcome = %q, want hit", resp.Outcome)
	}
	if resp.VM.Stack != testKey {
		t.Errorf("stack = %v, want %v", resp.VM.Stack, testKey)
	}
	if resp.VM.State != state.HandedOut {
		t.Errorf("state = %q, want handed_out", resp.VM.State)
	}
	id := resp.VM.ID

	vms, err := client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms.VMs) != 1 || vms.VMs[0].ID != id {
		t.Fatalf("handed-out VMs = %+v, want only %s", vms.VMs, id)
	}
	rec, err := td.store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != state.HandedOut {
		t.Errorf("stored state = %q, want handed_out", rec.State)
	}

	if err := client.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := td.sim.Check(vm.Instance{ID: id}); err == nil {
		t.Errorf("sim still runs %s after destroy", id)
	}
	vms, err = client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms.VMs) != 0 {
		t.Errorf("handed-out VMs after destroy = %+v, want none", vms.VMs)
	}
	err = client.Destroy(ctx, id)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("second destroy error = %v, want 404", err)
	}
}

func TestAcquireColdFallback(t *testing.T) {
	// Restores slow enough that the refill cannot land between two
	// acquires.
	p, err := sim.New(sim.Config{RestoreLatency: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	td := startTestDaemon(t, testConfig(t, t.TempDir()), p)
	ctx := context.Background()
	client := td.client()

	// node has depth 1..1: take its only warm VM, then ask again at once.
	if _, err := client.Acquire(ctx, AcquireRequest{Stack: otherKey, WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}
	_, err = client.Acquire(ctx, AcquireRequest{Stack: otherKey})
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("acquire from an empty bucket: err = %v, want 503", err)
	}
	resp, err := client.Acquire(ctx, AcquireRequest{Stack: otherKey, ColdFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Outcome != "cold" {
		t.Errorf("outcome = %q, want cold", resp.Outcome)
	}
	if resp.VM.Stack != otherKey {
		t.Errorf("stack = %v, want %v", resp.VM.Stack, otherKey)
	}
	if err := p.Check(resp.VM.Instance); err != nil {
		t.Errorf("cold VM is not running: %v", err)
	}
	vms, err := client.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms.VMs) != 2 {
		t.Errorf("handed-out VMs = %d, want 2", len(vms.VMs))
	}
}

func TestAPIBadInputs(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	okKey := `{"name":"py","version":"3.12","vcpus":1,"memory_mib":256}`
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string // a substring of the error message
	}{
		{"malformed JSON", "POST", "/v1/acquire", `{"stack":`, 400, "malformed JSON"},
		{"syntax error", "POST", "/v1/acquire", `{"stack" 1}`, 400, "malformed JSON at byte"},
		{"unknown field", "POST", "/v1/acquire", `{"stack":` + okKey + `,"colour":1}`, 400, `unknown field "colour"`},
		{"unknown nested field", "POST", "/v1/acquire", `{"stack":{"name":"py","cpus":1}}`, 400, `unknown field "cpus"`},
		{"wrong type", "POST", "/v1/acquire", `{"stack":` + okKey + `,"wait_ms":"soon"}`, 400, "invalid field wait_ms"},
		{"not an object", "POST", "/v1/acquire", `[1,2]`, 400, "expected an object"},
		{"trailing data", "POST", "/v1/acquire", `{"stack":` + okKey + `} {}`, 400, "trailing data"},
		{"empty body", "POST", "/v1/acquire", ``, 400, "request body is empty"},
		{"invalid key", "POST", "/v1/acquire", `{"stack":{"name":"../x","version":"1","vcpus":1,"memory_mib":64}}`, 400, "invalid name"},
		{"negative wait", "POST", "/v1/acquire", `{"stack":` + okKey + `,"wait_ms":-5}`, 400, "invalid wait_ms -5"},
		{"unknown stack", "POST", "/v1/acquire", `{"stack":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128}}`, 404, "unknown stack ruby@3"},
		{"oversized body", "POST", "/v1/acquire", `{"stack":` + okKey + `,"x":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "larger than 65536 bytes"},
		{"bad VM id", "DELETE", "/v1/vms/bad.id", "", 400, "invalid VM id"},
		{"unknown VM id", "DELETE", "/v1/vms/nope", "", 404, "no handed-out VM with id nope"},
		{"warm VM id", "DELETE", "/v1/vms/" + td.anyWarmID(t), "", 404, "no handed-out VM"},
		{"bad vcpus in path", "DELETE", "/v1/stacks/py/3.12/one/256", "", 400, `invalid vcpus "one"`},
		{"bad name in path", "DELETE", "/v1/stacks/p%20y/3.12/1/256", "", 400, "invalid name"},
		{"unknown stack in path", "DELETE", "/v1/stacks/ruby/3/1/128", "", 404, "unknown stack"},
		{"register duplicate", "POST", "/v1/stacks", `{"key":` + okKey + `,"snapshot":{"path":"sim://py"}}`, 409, "already registered"},
		{"register without path", "POST", "/v1/stacks", `{"key":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128},"snapshot":{}}`, 400, "snapshot.path: missing"},
		{"register bad depth", "POST", "/v1/stacks", `{"key":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128},"snapshot":{"path":"p"},"min_depth":4,"max_depth":2}`, 400, "must be >= min_depth (4)"},
		{"register other provider", "POST", "/v1/stacks", `{"key":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128},"snapshot":{"path":"p","provider":"qemu"}}`, 400, "does not match"},
		{"unknown API path", "GET", "/v1/nothing", "", 404, "no API endpoint GET /v1/nothing"},
		{"wrong method on acquire", "GET", "/v1/acquire", "", 405, "method GET is not allowed on /v1/acquire: use POST"},
		{"wrong method on vms", "PUT", "/v1/vms", "", 405, "method PUT is not allowed on /v1/vms: use GET, HEAD"},
		{"wrong method on metrics", "POST", "/metrics", "", 405, "method POST is not allowed on /metrics"},
		{"unknown path", "GET", "/nothing", "", 404, "no API endpoint GET /nothing"},
		{"register missing snapshot", "POST", "/v1/stacks", `{"key":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128},"snapshot":{"path":"/nonexistent/snap"}}`, 400, "snapshot.path: sim: snapshot: stat /nonexistent/snap"},
		{"register huge depth", "POST", "/v1/stacks", `{"key":{"name":"ruby","version":"3","vcpus":1,"memory_mib":128},"snapshot":{"path":"p"},"max_depth":1000000}`, 400, "max_depth: must be <= pool.max_vms_per_stack (64), got 1000000"},
	}

	before := td.Stats()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := td.do(t, tt.method, tt.path, tt.body)
			if status != tt.status {
				t.Errorf("status = %d, want %d (body %s)", status, tt.status, body)
			}
			var e ErrorResponse
			if err := json.Unmarshal([]byte(body), &e); err != nil {
				t.Fatalf("body is not a JSON error: %q", body)
			}
			if !strings.Contains(e.Error, tt.want) {
				t.Errorf("error = %q, want it to contain %q", e.Error, tt.want)
			}
		})
	}

	after := td.Stats()
	if len(after.Buckets) != len(before.Buckets) {
		t.Errorf("buckets changed from %d to %d", len(before.Buckets), len(after.Buckets))
	}
	if after.Hits != before.Hits {
		t.Errorf("hits changed from %d to %d", before.Hits, after.Hits)
	}
	vms, err := td.client().VMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vms.VMs) != 0 {
		t.Errorf("bad requests handed out VMs: %+v", vms.VMs)
	}
}

func TestWrongMethodSetsAllow(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	req, err := http.NewRequest("GET", "http://warmpool/v1/acquire", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := td.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("status = %d, want 405", resp.StatusCode)
	}
	if got := resp.Header.Get("Allow"); got != "POST" {
		t.Errorf("Allow = %q, want POST", got)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
}

// anyWarmID waits for a warm VM and returns its recorded id.
func (td *testDaemon) anyWarmID(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		recs, err := td.store.ListState(state.Warm)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > 0 {
			return recs[0].ID
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no warm VM recorded within 5s")
	return ""
}

func TestRegisterUnregisterOverAPI(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	ctx := context.Background()
	client := td.client()

	err := client.Register(ctx, RegisterRequest{Key: unusedKey, Snapshot: vm.Snapshot{Path: "sim://ruby"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Acquire(ctx, AcquireRequest{Stack: unusedKey, WaitMS: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if resp.VM.Snapshot.Provider != "sim" || resp.VM.Snapshot.ID != "ruby@3" {
		t.Errorf("snapshot = %+v, want provider sim and id ruby@3", resp.VM.Snapshot)
	}

	if err := client.Unregister(ctx, unusedKey); err != nil {
		t.Fatal(err)
	}
	_, err = client.Acquire(ctx, AcquireRequest{Stack: unusedKey})
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("acquire after unregister: err = %v, want 404", err)
	}
}

func TestPoolsAndProbes(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	ctx := context.Background()
	if _, err := td.client().Acquire(ctx, AcquireRequest{Stack: testKey, WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}
	pools, err := td.client().Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools.Buckets) != 2 {
		t.Fatalf("buckets = %d, want 2", len(pools.Buckets))
	}
	var py *BucketStatus
	for i := range pools.Buckets {
		if pools.Buckets[i].Stack == testKey {
			py = &pools.Buckets[i]
		}
	}
	if py == nil {
		t.Fatal("no bucket for py")
	}
	if py.Hits != 1 {
		t.Errorf("py hits = %d, want 1", py.Hits)
	}
	if py.MinDepth != 2 || py.MaxDepth != 3 {
		t.Errorf("py depth = %d..%d, want 2..3", py.MinDepth, py.MaxDepth)
	}

	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/"} {
		status, body := td.do(t, "GET", path, "")
		if status != 200 {
			t.Errorf("GET %s: status %d, body %.200s", path, status, body)
		}
	}
	_, metrics := td.do(t, "GET", "/metrics", "")
	if !strings.Contains(metrics, "warmpool_") {
		t.Error("/metrics has no warmpool_ series")
	}
}

func TestRecoverMiddlewareLogsPanic(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	h := td.recoverPanics(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()

	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 500 {
		t.Errorf("status = %d, want 500", resp.StatusCode)
	}
	if !strings.Contains(td.logs.String(), "panic in HTTP handler") {
		t.Error("panic was not logged")
	}
}

func TestSocketOfLiveDaemonRejected(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	_, err := listenUnix(td.config().Listen.Socket, 0o660)
	if err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Errorf("listen on a live socket: err = %v, want rejection", err)
	}
}

func TestStaleSocketRemoved(t *testing.T) {
	dir, err := os.MkdirTemp("", "wps")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")

	// A listener closed without unlinking leaves a socket file that no
	// process accepts on, as a daemon killed with SIGKILL does.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	ln, err = listenUnix(path, 0o600)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer ln.Close()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600", info.Mode().Perm())
	}

	regular := filepath.Join(dir, "file")
	writeConfig(t, regular, "x")
	if _, err := listenUnix(regular, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen over a regular file: err = %v, want rejection", err)
	}
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestServeLoopbackTCP(t *testing.T) {
	text := strings.Replace(testConfig(t, t.TempDir()), "listen:\n", "listen:\n  tcp: 127.0.0.1:0\n", 1)
	td := startTestDaemon(t, text, nil)
	addrs := td.Addrs()
	if len(addrs) != 2 {
		t.Fatalf("addresses = %v, want a unix socket and a TCP address", addrs)
	}
	if addrs[1].Network() != "tcp" {
		t.Fatalf("second address = %v, want tcp", addrs[1])
	}
	resp, err := http.Get("http://" + addrs[1].String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz over TCP: status %d, want 200", resp.StatusCode)
	}
}

func TestStatusPageCountsHandedOut(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	if _, err := td.client().Acquire(context.Background(), AcquireRequest{Stack: testKey, WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}
	status, body := td.do(t, "GET", "/status.json", "")
	if status != http.StatusOK {
		t.Fatalf("GET /status.json: status %d, body %s", status, body)
	}
	if !strings.Contains(body, `"handed_out_vms":1`) {
		t.Errorf("status JSON does not count 1 handed-out VM: %s", body)
	}
}
