// Package fcemu emulates a Firecracker process for tests: its HTTP API with
// Firecracker's state machine, the TAP and vsock devices, snapshot files,
// and the guest agent that the provider's health checks talk to. Nothing in
// it boots a guest.
package fcemu

import (
	"bytes"
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/warmpool/warmpool/vm/firecracker/api"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

// Options configures an emulator. The command reads them from FCEMU_*
// environment variables (see Env).
type Options struct {
	Spec    *fcspec.Spec
	Version string        // reported as vmm_version by GET /
	Latency time.Duration // added to every API call

	// CrashOn and HangOn name a request ("PUT /snapshot/load") on which
	// the process kills itself with SIGKILL or stops responding for good,
	// with probability FaultProbability, from 0 (never) to 1 (always).
	CrashOn, HangOn  string
	FaultProbability float64

	// AgentPort is the guest vsock port on which the emulated guest agent
	// serves the requests of package vsockproto (PING, SEED, RAND).
	// HeartbeatPort is the port the guest connects to on the host
	// (uds_path + "_<port>") to send a "HEARTBEAT <seq>" line every
	// HeartbeatInterval.
	AgentPort         uint32
	HeartbeatPort     uint32
	HeartbeatInterval time.Duration
	BootDelay         time.Duration // from InstanceStart until the agent replies to pings
	GuestHang         bool          // the agent accepts connections but never replies

	// ReseedError, when not empty, makes the agent reply "ERROR
	// <ReseedError>" to every SEED and leave its RNG state unchanged.
	ReseedError string
	// SeedFile, when not empty, is the file to which the agent writes
	// each seed it accepts, hex-encoded, replacing the previous one. A
	// relative path resolves in the emulator's working directory, which
	// the provider sets to the VM directory.
	SeedFile string

	Log *log.Logger
}

type vmState int

const (
	stateFresh      vmState = iota // nothing but logger or metrics configured
	stateConfigured                // pre-boot resources configured
	stateRunning
	statePaused
)

// snapshotState is the content of the emulator's snapshot state file.
type snapshotState struct {
	Format  string                 `json:"format"`
	Version string                 `json:"version"`
	Machine api.MachineConfig      `json:"machine"`
	Drives  []api.Drive            `json:"drives"`
	Nets    []api.NetworkInterface `json:"nets"`
	Vsock   *api.Vsock             `json:"vsock,omitempty"`
	// RNG is the emulated guest kernel RNG state. Every clone restored
	// from the file starts with it. Snapshots without a guest have none.
	RNG []byte `json:"rng,omitempty"`
}

const snapshotFormat = "fcemu-1"

// Emulator serves the Firecracker API of one emulated VM.
type Emulator struct {
	opts    Options
	version api.Version
	exit    func(code int)

	mu      sync.Mutex // guards the fields below; held for no network I/O
	state   vmState
	loaded  bool
	hung    bool
	machine *api.MachineConfig
	boot    *api.BootSource
	drives  map[string]api.Drive
	nets    map[string]api.NetworkInterface
	taps    map[string]*os.File
	vsock   *api.Vsock
	guest   *guest
}

// New returns an emulator. exit ends the process; tests pass their own.
func New(opts Options, exit func(code int)) (*Emulator, error) {
	v, err := api.ParseVersion(opts.Version)
	if err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = log.New(io.Discard, "", 0)
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = 200 * time.Millisecond
	}
	return &Emulator{
		opts: opts, version: v, exit: exit,
		drives: map[string]api.Drive{}, nets: map[string]api.NetworkInterface{}, taps: map[string]*os.File{},
	}, nil
}

// Close stops the guest and releases the TAP devices.
func (e *Emulator) Close() {
	e.mu.Lock()
	g := e.guest
	e.guest = nil
	e.closeTAPsLocked()
	e.mu.Unlock()
	if g != nil {
		g.stop()
	}
}

// LastSeed returns the last seed that the emulated guest agent accepted
// with SEED, or nil when it accepted none or the VM has no vsock device.
func (e *Emulator) LastSeed() []byte {
	e.mu.Lock()
	g := e.guest
	e.mu.Unlock()
	if g == nil {
		return nil
	}
	return g.seed()
}

// badRequest is a request rejected with status 400 and fault_message.
type badRequest struct{ msg string }

func (b badRequest) Error() string { return b.msg }

func reject(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// ServeHTTP validates the request against the description, applies faults
// and latency, and runs the handler for its route.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeFault(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	route := r.Method + " " + r.URL.Path
	e.opts.Log.Printf("request %s %s", route, body)

	e.injectFaults(route)
	if e.opts.Latency > 0 {
		time.Sleep(e.opts.Latency)
	}

	if err := e.opts.Spec.ValidateRequest(r); err != nil {
		writeFault(w, http.StatusBadRequest, "invalid request: "+err.Error())
		return
	}

	out, err := e.handle(r.Method, r.URL.Path, body)
	var bad badRequest
	switch {
	case err == nil && out != nil:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errorsAs(err, &bad):
		writeFault(w, http.StatusBadRequest, err.Error())
	default:
		writeFault(w, http.StatusInternalServerError, err.Error())
	}
}

func errorsAs(err error, bad *badRequest) bool {
	b, ok := err.(badRequest)
	if ok {
		*bad = b
	}
	return ok
}

func writeFault(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Fault{FaultMessage: msg})
}

func (e *Emulator) injectFaults(route string) {
	e.mu.Lock()
	hung := e.hung
	e.mu.Unlock()
	if hung {
		select {}
	}
	p := e.opts.FaultProbability
	if route == e.opts.CrashOn && rand.Float64() < p {
		e.opts.Log.Printf("crashing on %s as configured", route)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	if route == e.opts.HangOn && rand.Float64() < p {
		e.opts.Log.Printf("hanging on %s as configured", route)
		e.mu.Lock()
		e.hung = true
		g := e.guest
		e.mu.Unlock()
		if g != nil {
			g.hang()
		}
		select {}
	}
}

func (e *Emulator) handle(method, path string, body []byte) (any, error) {
	switch {
	case method == "GET" && path == "/":
		return e.describe(), nil
	case method == "PUT" && path == "/logger", method == "PUT" && path == "/metrics":
		return nil, nil
	case method == "PUT" && path == "/machine-config":
		return nil, configure(e, body, func(mc api.MachineConfig) error {
			if mc.VCPUCount != 1 && mc.VCPUCount%2 != 0 {
				return reject("vcpu_count %d: must be 1 or an even number", mc.VCPUCount)
			}
			e.machine = &mc
			return nil
		})
	case method == "PUT" && path == "/boot-source":
		return nil, configure(e, body, func(bs api.BootSource) error {
			if _, err := os.Stat(bs.KernelImagePath); err != nil {
				return reject("kernel_image_path: %v", err)
			}
			e.boot = &bs
			return nil
		})
	case method == "PUT" && strings.HasPrefix(path, "/drives/"):
		return nil, configure(e, body, func(d api.Drive) error {
			if "/drives/"+d.DriveID != path {
				return reject("drive_id %q does not match the path %s", d.DriveID, path)
			}
			if _, err := os.Stat(d.PathOnHost); err != nil {
				return reject("drive %s: %v", d.DriveID, err)
			}
			e.drives[d.DriveID] = d
			return nil
		})
	case method == "PUT" && strings.HasPrefix(path, "/network-interfaces/"):
		return nil, configure(e, body, func(n api.NetworkInterface) error {
			if "/network-interfaces/"+n.IfaceID != path {
				return reject("iface_id %q does not match the path %s", n.IfaceID, path)
			}
			if err := e.openTAPLocked(n.IfaceID, n.HostDevName); err != nil {
				return err
			}
			e.nets[n.IfaceID] = n
			return nil
		})
	case method == "PUT" && path == "/vsock":
		return nil, configure(e, body, func(v api.Vsock) error {
			e.vsock = &v
			return nil
		})
	case method == "PUT" && path == "/entropy":
		return nil, configure(e, body, func(api.Entropy) error { return nil })
	case method == "PUT" && path == "/actions":
		return nil, e.action(body)
	case method == "PATCH" && path == "/vm":
		return nil, e.patchVM(body)
	case method == "PUT" && path == "/snapshot/create":
		return nil, e.createSnapshot(body)
	case method == "PUT" && path == "/snapshot/load":
		return nil, e.loadSnapshot(body)
	}
	return nil, reject("%s %s is not emulated", method, path)
}

func (e *Emulator) describe() api.InstanceInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	state := api.StateNotStarted
	switch e.state {
	case stateRunning:
		state = api.StateRunning
	case statePaused:
		state = api.StatePaused
	}
	return api.InstanceInfo{AppName: "Firecracker", ID: "anonymous-instance", State: state, VMMVersion: e.opts.Version}
}

// configure decodes a pre-boot resource and applies it with the lock held.
func configure[T any](e *Emulator, body []byte, apply func(T) error) error {
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		return reject("decode body: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.loaded || e.state >= stateRunning {
		return reject("the requested operation is not supported after starting the microVM or loading a snapshot")
	}
	if err := apply(v); err != nil {
		return err
	}
	e.state = stateConfigured
	return nil
}

func (e *Emulator) action(body []byte) error {
	var a api.Action
	if err := json.Unmarshal(body, &a); err != nil {
		return reject("decode body: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch a.ActionType {
	case api.ActionInstanceStart:
		if e.state >= stateRunning || e.loaded {
			return reject("InstanceStart: the microVM is already running")
		}
		if e.boot == nil {
			return reject("InstanceStart: missing boot source: PUT /boot-source first")
		}
		var rng [rngKeySize]byte
		crand.Read(rng[:])
		if err := e.startGuestLocked(e.opts.BootDelay, rng); err != nil {
			return reject("InstanceStart: %v", err)
		}
		e.state = stateRunning
		return nil
	case api.ActionSendCtrlAltDel:
		if e.state != stateRunning {
			return reject("SendCtrlAltDel: the microVM is not running")
		}
		// The emulated guest shuts down, and Firecracker exits with it.
		go func() {
			time.Sleep(20 * time.Millisecond)
			e.Close()
			e.exit(0)
		}()
		return nil
	}
	return reject("action %s is not emulated", a.ActionType)
}

func (e *Emulator) patchVM(body []byte) error {
	var s api.VMState
	if err := json.Unmarshal(body, &s); err != nil {
		return reject("decode body: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state < stateRunning {
		return reject("PATCH /vm: the microVM is not started")
	}
	if s.State == api.VMPaused {
		e.state = statePaused
		e.guest.setPaused(true)
	} else {
		e.state = stateRunning
		e.guest.setPaused(false)
	}
	return nil
}

func (e *Emulator) createSnapshot(body []byte) error {
	var sc api.SnapshotCreate
	if err := json.Unmarshal(body, &sc); err != nil {
		return reject("decode body: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != statePaused {
		return reject("snapshot create: the microVM must be paused first (PATCH /vm Paused)")
	}

	state := snapshotState{Format: snapshotFormat, Version: e.opts.Version, Machine: *e.machine, Vsock: e.vsock}
	if e.guest != nil {
		rng := e.guest.rngState()
		state.RNG = rng[:]
	}
	for _, d := range e.drives {
		state.Drives = append(state.Drives, d)
	}
	for _, n := range e.nets {
		state.Nets = append(state.Nets, n)
	}

	data, err := json.Marshal(state)
	if err != nil {
		return err
	}
	if err := os.WriteFile(sc.SnapshotPath, data, 0o600); err != nil {
		return reject("snapshot create: %v", err)
	}

	mem, err := os.OpenFile(sc.MemFilePath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return reject("snapshot create: %v", err)
	}
	defer mem.Close()
	if err := mem.Truncate(int64(e.machine.MemSizeMiB) << 20); err != nil {
		return reject("snapshot create: %v", err)
	}
	return nil
}

func (e *Emulator) loadSnapshot(body []byte) error {
	var sl api.SnapshotLoad
	if err := json.Unmarshal(body, &sl); err != nil {
		return reject("decode body: %v", err)
	}
	if (sl.MemFilePath == "") == (sl.MemBackend == nil) {
		return reject("snapshot load: exactly one of mem_file_path and mem_backend must be present")
	}
	if len(sl.NetworkOverrides) > 0 && !e.version.AtLeast(api.NetworkOverridesSince) {
		return reject("snapshot load: unknown field `network_overrides`")
	}
	if sl.VsockOverride != nil && !e.version.AtLeast(api.VsockOverrideSince) {
		return reject("snapshot load: unknown field `vsock_override`")
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != stateFresh || e.loaded {
		return reject("loading a microVM snapshot not allowed after configuring boot-specific resources")
	}
	state, err := readSnapshotState(sl)
	if err != nil {
		return err
	}
	for _, d := range state.Drives {
		if _, err := os.Stat(d.PathOnHost); err != nil {
			return reject("snapshot load: drive %s: %v", d.DriveID, err)
		}
	}
	if err := e.openSnapshotTAPsLocked(state.Nets, sl.NetworkOverrides); err != nil {
		return err
	}

	e.vsock = state.Vsock
	if e.vsock != nil && sl.VsockOverride != nil {
		v := *e.vsock
		v.UDSPath = sl.VsockOverride.UDSPath
		e.vsock = &v
	}
	var rng [rngKeySize]byte
	copy(rng[:], state.RNG)
	if err := e.startGuestLocked(0, rng); err != nil {
		e.closeTAPsLocked()
		return reject("snapshot load: %v", err)
	}
	e.loaded = true
	e.machine = &state.Machine
	e.state = statePaused
	e.guest.setPaused(true)
	if sl.ResumeVM {
		e.state = stateRunning
		e.guest.setPaused(false)
	}
	return nil
}

func readSnapshotState(sl api.SnapshotLoad) (snapshotState, error) {
	var state snapshotState
	data, err := os.ReadFile(sl.SnapshotPath)
	if err != nil {
		return state, reject("snapshot load: %v", err)
	}
	if err := json.Unmarshal(data, &state); err != nil || state.Format != snapshotFormat {
		return state, reject("snapshot load: %s is not a snapshot state file", sl.SnapshotPath)
	}

	memPath := sl.MemFilePath
	if sl.MemBackend != nil {
		memPath = sl.MemBackend.BackendPath
	}
	if sl.MemBackend != nil && sl.MemBackend.BackendType == api.BackendUffd {
		// A page-fault handler serves the memory: check that it listens.
		conn, err := dialUnix(memPath)
		if err != nil {
			return state, reject("snapshot load: uffd backend: %v", err)
		}
		conn.Close()
		return state, nil
	}
	info, err := os.Stat(memPath)
	if err != nil {
		return state, reject("snapshot load: memory file: %v", err)
	}
	if want := int64(state.Machine.MemSizeMiB) << 20; info.Size() != want {
		return state, reject("snapshot load: memory file %s has %d bytes, want %d", memPath, info.Size(), want)
	}
	return state, nil
}

// openSnapshotTAPsLocked opens the TAP device of each restored interface,
// renamed by overrides where given. On failure it closes what it opened.
func (e *Emulator) openSnapshotTAPsLocked(nets []api.NetworkInterface, overrides []api.NetworkOverride) error {
	names := map[string]string{}
	for _, n := range nets {
		names[n.IfaceID] = n.HostDevName
	}
	for _, o := range overrides {
		if _, ok := names[o.IfaceID]; !ok {
			return reject("snapshot load: network override for unknown interface %q", o.IfaceID)
		}
		names[o.IfaceID] = o.HostDevName
	}
	for _, n := range nets {
		if err := e.openTAPLocked(n.IfaceID, names[n.IfaceID]); err != nil {
			e.closeTAPsLocked()
			return err
		}
		n.HostDevName = names[n.IfaceID]
		e.nets[n.IfaceID] = n
	}
	return nil
}

func (e *Emulator) openTAPLocked(ifaceID, name string) error {
	if old, ok := e.taps[ifaceID]; ok {
		old.Close()
		delete(e.taps, ifaceID)
	}
	f, err := openTAP(name)
	if err != nil {
		return reject("open TAP device %q for interface %s: %v", name, ifaceID, err)
	}
	e.taps[ifaceID] = f
	return nil
}

func (e *Emulator) startGuestLocked(bootDelay time.Duration, rng [rngKeySize]byte) error {
	if e.vsock == nil || e.guest != nil {
		return nil
	}
	g, err := startGuest(e.vsock.UDSPath, bootDelay, rng, e.opts)
	if err != nil {
		return err
	}
	e.guest = g
	return nil
}

func (e *Emulator) closeTAPsLocked() {
	for id, f := range e.taps {
		f.Close()
		delete(e.taps, id)
	}
}
