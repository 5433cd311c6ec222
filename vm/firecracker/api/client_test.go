package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"

	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

func loadSpec(t *testing.T) *fcspec.Spec {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	path := fcspec.Locate(wd)
	if path == "" {
		testenv.Skipf(t, "Firecracker API description not found: set %s to the path of firecracker-api.yaml", fcspec.EnvVar)
	}
	spec, err := fcspec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// specServer validates every request against the description, records it,
// and replies the way Firecracker does on success.
type specServer struct {
	spec    *fcspec.Spec
	version string

	mu       sync.Mutex
	requests []string
	invalid  []string
}

func (s *specServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	err := s.spec.ValidateRequest(r)

	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+r.URL.Path+" "+string(body))
	if err != nil {
		s.invalid = append(s.invalid, err.Error())
	}
	s.mu.Unlock()

	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(Fault{FaultMessage: err.Error()})
		return
	}
	if r.Method == "GET" && r.URL.Path == "/" {
		json.NewEncoder(w).Encode(InstanceInfo{AppName: "Firecracker", ID: "t", State: StateNotStarted, VMMVersion: s.version})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestClientRequestsMatchDescription(t *testing.T) {
	spec := loadSpec(t)
	srv := &specServer{spec: spec, version: "1.16.1"}
	c := New(serveUnix(t, srv), time.Second)
	defer c.Close()
	ctx := context.Background()
	yes := true

	calls := map[string]func() error{
		"describe": func() error { _, err := c.Describe(ctx); return err },
		"machine-config": func() error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256, SMT: new(bool), TrackDirtyPages: &yes, HugePages: "None"})
		},
		"boot-source": func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0", InitrdPath: "/i"})
		},
		"drive": func() error {
			return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "rootfs.ext4", IsRootDevice: true, IsReadOnly: true, CacheType: "Unsafe", IOEngine: "Sync"})
		},
		"network-interface": func() error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02", MTU: 1500})
		},
		"vsock":   func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "vsock.sock"}) },
		"entropy": func() error { return c.PutEntropy(ctx, Entropy{}) },
		"logger": func() error {
			return c.PutLogger(ctx, Logger{LogPath: "fc.log", Level: "Info", ShowLevel: &yes, ShowLogOrigin: &yes})
		},
		"metrics":           func() error { return c.PutMetrics(ctx, Metrics{MetricsPath: "metrics.fifo"}) },
		"instance-start":    func() error { return c.InstanceStart(ctx) },
		"send-ctrl-alt-del": func() error { return c.SendCtrlAltDel(ctx) },
		"pause":             func() error { return c.Pause(ctx) },
		"resume":            func() error { return c.Resume(ctx) },
		"snapshot-create": func() error {
			return c.CreateSnapshot(ctx, SnapshotCreate{SnapshotPath: "s", MemFilePath: "m", SnapshotType: "Full"})
		},
		"snapshot-load-file": func() error {
			load := SnapshotLoad{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: BackendFile, BackendPath: "m"},
				TrackDirtyPages: true, ResumeVM: true,
				NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap7"}}}
			// Descriptions before vsock_override existed would accept the
			// unknown field, so send it only where the description has it.
			if spec.HasSchemaProperty("SnapshotLoadParams", "vsock_override") {
				load.VsockOverride = &VsockOverride{UDSPath: "/run/v.sock"}
			} else {
				t.Log("the API description has no vsock_override: not sent")
			}
			return c.LoadSnapshot(ctx, load)
		},
		"snapshot-load-uffd": func() error {
			return c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: BackendUffd, BackendPath: "uffd.sock"}})
		},
		"snapshot-load-mem-file-path": func() error {
			return c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "s", MemFilePath: "m"})
		},
	}
	for name, call := range calls {
		if err := call(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, msg := range srv.invalid {
		t.Errorf("request does not match the description: %s", msg)
	}
	if len(srv.requests) < len(calls) {
		t.Errorf("server saw %d requests, want at least %d", len(srv.requests), len(calls))
	}
}

func TestDescriptionRejectsBadRequest(t *testing.T) {
	// The validator must be able to fail, or the test above proves nothing.
	spec := loadSpec(t)
	srv := &specServer{spec: spec, version: "1.16.1"}
	c := New(serveUnix(t, srv), time.Second)
	defer c.Close()

	err := c.do(context.Background(), "PUT", "/machine-config", map[string]any{"vcpu_count": 0, "mem_size_mib": 128}, nil)
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want *APIError", err)
	}
	if !apiErr.IsBadRequest() {
		t.Errorf("status %d is not a bad request", apiErr.StatusCode)
	}
	if !strings.Contains(apiErr.FaultMessage, "vcpu_count") {
		t.Errorf("fault message %q does not name vcpu_count", apiErr.FaultMessage)
	}

	err = c.do(context.Background(), "PUT", "/snapshot/load", map[string]any{"mem_file_path": "m"}, nil)
	if !IsBadRequest(err) {
		t.Errorf("load without snapshot_path: err = %v, want bad request", err)
	}
}

func TestLoadSnapshotVersionGate(t *testing.T) {
	srv := &specServer{spec: loadSpec(t), version: "1.11.2"}
	c := New(serveUnix(t, srv), time.Second)
	defer c.Close()

	err := c.LoadSnapshot(context.Background(), SnapshotLoad{SnapshotPath: "s", MemFilePath: "m",
		NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}})
	var unsupported *UnsupportedError
	if !errors.As(err, &unsupported) {
		t.Fatalf("err = %v, want *UnsupportedError", err)
	}
	if !strings.Contains(err.Error(), "1.12.0") {
		t.Errorf("error %q does not name the version needed", err)
	}

	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, r := range srv.requests {
		if strings.HasPrefix(r, "PUT /snapshot/load") {
			t.Errorf("rejected load was sent: %s", r)
		}
	}
}

func TestCheckLoadVersions(t *testing.T) {
	netOverride := SnapshotLoad{NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "t"}}}
	vsockOverride := SnapshotLoad{VsockOverride: &VsockOverride{UDSPath: "v"}}
	cases := []struct {
		name    string
		version string
		load    SnapshotLoad
		wantErr bool
	}{
		{"network override on 1.11", "1.11.9", netOverride, true},
		{"network override on 1.12", "1.12.0", netOverride, false},
		{"vsock override on 1.15", "1.15.1", vsockOverride, true},
		{"vsock override on 1.16", "1.16.1", vsockOverride, false},
		{"plain load on 1.0", "1.0.0", SnapshotLoad{}, false},
		{"dev build suffix", "v2.0.0-dev", netOverride, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParseVersion(tc.version)
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckLoad(v, tc.load); (err != nil) != tc.wantErr {
				t.Errorf("CheckLoad(%s) = %v, want error %v", v, err, tc.wantErr)
			}
		})
	}
}

func TestLoadSnapshotMemorySource(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	both := SnapshotLoad{SnapshotPath: "s", MemFilePath: "m", MemBackend: &MemoryBackend{BackendType: BackendFile, BackendPath: "m"}}
	if err := c.LoadSnapshot(context.Background(), both); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both memory sources: err = %v", err)
	}
	if err := c.LoadSnapshot(context.Background(), SnapshotLoad{SnapshotPath: "s"}); err == nil || !strings.Contains(err.Error(), "missing memory source") {
		t.Errorf("no memory source: err = %v", err)
	}
}

func TestClientTransportErrors(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "missing.sock"), time.Second)
	err := c.Pause(context.Background())
	var transport *TransportError
	if !errors.As(err, &transport) {
		t.Fatalf("missing socket: err = %v, want *TransportError", err)
	}
	if IsBadRequest(err) {
		t.Error("a transport error counts as a bad request")
	}

	hang := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	c = New(hang, 50*time.Millisecond)
	defer c.Close()
	err = c.Resume(context.Background())
	if !errors.As(err, &transport) {
		t.Fatalf("hung server: err = %v, want *TransportError", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung server: err = %v, want deadline exceeded", err)
	}
}

func TestClientTimeoutUnderLaterDeadline(t *testing.T) {
	hang := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	c := New(hang, 50*time.Millisecond)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	err := c.Resume(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung server: err = %v, want deadline exceeded", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the call waited for the caller's 10s deadline instead of the client's 50ms timeout")
	}

	// A call that needs longer than the client's timeout gets it from the
	// context, but never more than the caller's deadline.
	longCtx := WithCallTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	c.Resume(longCtx)
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Errorf("call with a 300ms call timeout ended after %v", elapsed)
	}
}

func TestAPIErrorWithoutFaultBody(t *testing.T) {
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "plain failure", http.StatusInternalServerError)
	}))
	c := New(sock, time.Second)
	defer c.Close()
	err := c.InstanceStart(context.Background())
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want *APIError", err)
	}
	if apiErr.IsBadRequest() {
		t.Error("status 500 counts as a bad request")
	}
	if apiErr.FaultMessage != "plain failure" {
		t.Errorf("fault message = %q", apiErr.FaultMessage)
	}
}
