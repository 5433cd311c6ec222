// Package firecracker is a vm.Provider that runs each VM in its own
// Firecracker process, restored from a snapshot that Template made.
//
// A restore spawns firecracker (or the jailer in front of it), loads the
// snapshot as the first configuring call, resumes the VM and then checks
// the guest agent over vsock and reseeds the guest's kernel RNG. Clones of one snapshot get their own TAP
// devices (renamed with network_overrides, or the same names in their own
// network namespace), their own vsock socket and their own copy of each
// writable drive.
package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// Provider runs Firecracker VMs. It is safe for concurrent use.
type Provider struct {
	cfg Config

	// mu guards the maps below. No process, API, network or file work
	// happens while it is held.
	mu               sync.Mutex
	vms              map[string]*machine
	inFlight         map[string]*inFlight // ids that a Restore or Template is setting up
	snapshotRefs     map[string]int       // snapshot path -> VMs using it
	removeWhenUnused map[string]bool      // snapshot paths that RemoveSnapshot marked
}

var (
	_ vm.Provider   = (*Provider)(nil)
	_ vm.Reattacher = (*Provider)(nil)
)

// machine is a VM this provider runs or has reattached to.
type machine struct {
	id         string
	dir        string
	proc       *process
	client     *api.Client
	heartbeats *heartbeatListener
	vsockPath  string
	restoredAt time.Time
	record     vmRecord
	countsRef  bool // whether the VM holds a reference on record.Snapshot
}

// vmRecord is written to the record directory (see Config.recordDir) so
// that Destroy and Reattach find everything a VM owns from its id alone.
type vmRecord struct {
	PID      int      `json:"pid"`
	Snapshot string   `json:"snapshot,omitempty"`
	Netns    string   `json:"netns,omitempty"`
	TAPs     []string `json:"taps,omitempty"` // TAP devices the provider created
	// Owner is the program that started the VM, and Detached whether the
	// VM may outlive it. New reclaims VMs whose owner has died unless
	// they are detached.
	Owner    *programID `json:"owner,omitempty"`
	Detached bool       `json:"detached,omitempty"`
}

const recordName = "warmpool-vm.json"

// New checks cfg, fills in defaults and creates the state directory. It
// then destroys the VMs in the state directory that a program which no
// longer runs started without Detached (see reclaimStale), and returns
// an error if that fails.
func New(cfg Config) (*Provider, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "vms"), 0o755); err != nil {
		return nil, fmt.Errorf("firecracker: create state dir: %w", err)
	}
	p := &Provider{
		cfg:              cfg,
		vms:              map[string]*machine{},
		inFlight:         map[string]*inFlight{},
		snapshotRefs:     map[string]int{},
		removeWhenUnused: map[string]bool{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), reclaimTimeout)
	defer cancel()
	if _, err := p.reclaimStale(ctx); err != nil {
		return nil, fmt.Errorf("firecracker: reclaim VMs of a program that exited: %w", err)
	}
	return p, nil
}

// Name returns "firecracker".
func (p *Provider) Name() string { return ProviderName }

// Config returns the provider's configuration with defaults filled in.
func (p *Provider) Config() Config { return p.cfg }

// inFlight is a Restore or Template that has claimed its VM id and not
// yet finished. Destroy of that id cancels it and waits for done.
type inFlight struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// claim reserves id for a Restore or Template until release is called.
// It fails when the id is running or being set up. The returned context
// ends when Destroy cancels the claim.
func (p *Provider) claim(ctx context.Context, id string) (context.Context, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vms[id] != nil {
		return nil, nil, fmt.Errorf("VM %s is already running", id)
	}
	if p.inFlight[id] != nil {
		return nil, nil, fmt.Errorf("a restore or template of VM %s is in progress", id)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &inFlight{cancel: cancel, done: make(chan struct{})}
	p.inFlight[id] = f
	release := func() {
		p.mu.Lock()
		delete(p.inFlight, id)
		p.mu.Unlock()
		cancel()
		close(f.done)
	}
	return ctx, release, nil
}

func (p *Provider) lookup(id string) *machine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vms[id]
}

// Restore starts VM id from snap: it spawns a fresh VMM, loads the snapshot
// and resumes it, and waits for the guest agent to reply to a ping. It then
// reseeds the guest's kernel RNG, because clones of one snapshot start
// with the same RNG state. On any failure, including ctx ending or the
// agent rejecting the seed, it removes everything it created.
func (p *Provider) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	inst, err := p.restore(ctx, id, key, snap)
	if err != nil {
		return vm.Instance{}, fmt.Errorf("firecracker: restore %s: %w", id, err)
	}
	return inst, nil
}

func (p *Provider) restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (inst vm.Instance, err error) {
	if _, err := p.cfg.ownedDir(id); err != nil {
		return inst, err
	}
	ctx, release, err := p.claim(ctx, id)
	if err != nil {
		return inst, err
	}
	defer release()
	if snap.Provider != ProviderName {
		return inst, fmt.Errorf("snapshot %s was made by provider %q, want %q", snap.ID, snap.Provider, ProviderName)
	}
	meta, err := ReadMetadata(snap.Path)
	if err != nil {
		return inst, err
	}
	if meta.Machine.VCPUCount != key.VCPUs || meta.Machine.MemSizeMiB != key.MemoryMiB {
		return inst, fmt.Errorf("snapshot %s has %d vCPUs and %d MiB, stack %s wants %d and %d",
			snap.ID, meta.Machine.VCPUCount, meta.Machine.MemSizeMiB, key, key.VCPUs, key.MemoryMiB)
	}

	m, err := p.prepare(ctx, id, snap.Path, meta.Network, true)
	if m != nil {
		defer func() {
			if err != nil {
				err = errors.Join(err, p.teardown(context.WithoutCancel(ctx), m))
			}
		}()
	}
	if err != nil {
		return inst, err
	}

	if err := p.startVMM(ctx, m, meta.Drives, snap.Path); err != nil {
		return inst, err
	}
	if err := p.loadSnapshot(ctx, m, meta, snap.Path); err != nil {
		return inst, err
	}

	healthCtx, cancel := context.WithTimeout(ctx, p.cfg.HealthTimeout)
	defer cancel()
	if err := waitHealthy(healthCtx, m.proc, m.vsockPath, p.cfg.AgentPort); err != nil {
		return inst, err
	}
	if err := reseed(healthCtx, m.vsockPath, p.cfg.AgentPort); err != nil {
		if !m.proc.alive() {
			return inst, fmt.Errorf("%w: %w", err, m.proc.exitError())
		}
		return inst, m.proc.withOutput(err)
	}

	m.restoredAt = time.Now()
	p.mu.Lock()
	p.vms[id] = m
	p.mu.Unlock()
	return p.instance(m, key, snap), nil
}

// prepare creates the VM directory, the record file, the network namespace
// and TAP devices, and takes a reference on the snapshot at snapPath unless
// it is "". When prepare fails halfway it returns the machine with the
// error, ready for teardown, which removes only what prepare created. It
// returns a nil machine when it created nothing. Clones get renamed TAP
// devices in NetworkOverride mode.
func (p *Provider) prepare(ctx context.Context, id, snapPath string, nets []api.NetworkInterface, clone bool) (*machine, error) {
	dir := p.cfg.vmDir(id)
	owner := thisProgram
	record := vmRecord{Snapshot: snapPath, Owner: &owner, Detached: p.cfg.Detached}
	m := &machine{id: id, dir: dir, vsockPath: filepath.Join(dir, vsockName), record: record}
	// The record directory exists once per id, so creating it claims the id.
	recordDir := p.cfg.recordDir(id)
	if err := os.Mkdir(recordDir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("VM directory %s already exists: the id is in use, or destroy it first", recordDir)
		}
		return nil, err
	}
	if dir != recordDir {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			os.Remove(recordDir)
			return nil, err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			os.Remove(recordDir)
			if errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("chroot %s already exists: destroy VM %s first", dir, id)
			}
			return nil, err
		}
	}
	if snapPath != "" {
		p.acquireSnapshot(snapPath)
		m.countsRef = true
	}

	netns := ""
	if p.cfg.NetworkMode == NetworkNamespace {
		m.record.Netns = netnsName(id)
		if err := p.writeRecord(m); err != nil {
			return m, err
		}
		if _, err := createNetns(ctx, m.record.Netns); err != nil {
			m.record.Netns = ""
			return m, err
		}
		netns = m.record.Netns
	}
	if p.cfg.CreateTAPs {
		uid, gid := p.owner()
		for _, n := range nets {
			name := p.tapName(id, n, clone)
			m.record.TAPs = append(m.record.TAPs, name)
			if err := p.writeRecord(m); err != nil {
				return m, err
			}
			if err := createTAP(ctx, netns, name, uid, gid); err != nil {
				m.record.TAPs = m.record.TAPs[:len(m.record.TAPs)-1]
				return m, err
			}
		}
	}
	return m, p.writeRecord(m)
}

// tapName returns the host TAP device of interface n for VM id: renamed in
// NetworkOverride mode for clones, the snapshot's own name otherwise.
func (p *Provider) tapName(id string, n api.NetworkInterface, clone bool) string {
	if p.cfg.NetworkMode == NetworkOverride && clone {
		return cloneTAPName(id, n.IfaceID)
	}
	return n.HostDevName
}

// owner returns the uid and gid of the jailed VMM, or -1, -1 without jailer.
func (p *Provider) owner() (int, int) {
	if j := p.cfg.Jailer; j != nil {
		return j.UID, j.GID
	}
	return -1, -1
}

func (p *Provider) writeRecord(m *machine) error {
	data, err := json.Marshal(m.record)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(p.cfg.recordDir(m.id), recordName), data, 0o600)
}

// startVMM stages the drives, opens the heartbeat socket, spawns the VMM
// and waits for its API socket.
func (p *Provider) startVMM(ctx context.Context, m *machine, drives []MetadataDrive, snapPath string) error {
	uid, gid := p.owner()
	if snapPath != "" {
		if err := stageDrives(snapPath, m.dir, drives, uid, gid); err != nil {
			return err
		}
	}
	if uid >= 0 {
		if err := os.Chown(m.dir, uid, gid); err != nil {
			return err
		}
	}

	hb, err := listenHeartbeats(m.vsockPath+"_"+strconv.FormatUint(uint64(p.cfg.HeartbeatPort), 10), uid, gid)
	if err != nil {
		return err
	}
	m.heartbeats = hb

	spec := spawnSpec{id: m.id, dir: m.dir}
	if m.record.Netns != "" {
		spec.netns = filepath.Join(netnsDir, m.record.Netns)
	}
	proc, err := p.cfg.spawn(spec)
	if err != nil {
		return err
	}
	m.proc = proc
	m.record.PID = proc.pid
	if err := p.writeRecord(m); err != nil {
		return err
	}

	m.client = api.New(filepath.Join(m.dir, apiSocketName), p.cfg.APITimeout)
	return waitForSocket(ctx, proc, m.client.Socket(), p.cfg.SocketTimeout)
}

// loadSnapshot sends the snapshot load with resume, as the first
// configuring call of the fresh VMM.
func (p *Provider) loadSnapshot(ctx context.Context, m *machine, meta Metadata, snapPath string) error {
	statePath, err := snapshotFile(snapPath, meta.StateFile)
	if err != nil {
		return err
	}
	memPath, err := snapshotFile(snapPath, meta.MemFile)
	if err != nil {
		return err
	}
	if p.cfg.Jailer != nil {
		// The jailed VMM can open only files inside its chroot, so link them in.
		uid, gid := p.owner()
		statePath, memPath, err = linkIntoChroot(m.dir, statePath, memPath, uid, gid)
		if err != nil {
			return err
		}
	}

	load := api.SnapshotLoad{
		SnapshotPath: statePath,
		MemBackend:   &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: memPath},
		ResumeVM:     true,
	}
	if p.cfg.NetworkMode == NetworkOverride {
		for _, n := range meta.Network {
			load.NetworkOverrides = append(load.NetworkOverrides,
				api.NetworkOverride{IfaceID: n.IfaceID, HostDevName: cloneTAPName(m.id, n.IfaceID)})
		}
	}
	// The snapshot's vsock path is relative and resolves to the VM
	// directory of each clone, so no vsock_override is needed.
	if err := m.client.LoadSnapshot(ctx, load); err != nil {
		return m.proc.failure(fmt.Errorf("snapshot load: %w", err))
	}
	return nil
}

// linkIntoChroot makes the snapshot's state and memory files readable
// inside the chroot at root, with shareFile, and returns their paths
// relative to the chroot.
func linkIntoChroot(root, statePath, memPath string, uid, gid int) (string, string, error) {
	dir := filepath.Join(root, loadDirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	var inside []string
	for _, src := range []string{statePath, memPath} {
		dst := filepath.Join(dir, filepath.Base(src))
		// NOTE: a copy (across file systems, or of a file the jailed uid
		// cannot read) copies the whole memory file.
		if err := shareFile(src, dst, uid, gid); err != nil {
			return "", "", fmt.Errorf("link %s into chroot: %w", src, err)
		}
		inside = append(inside, "/"+loadDirName+"/"+filepath.Base(src))
	}
	return inside[0], inside[1], nil
}

func (p *Provider) instance(m *machine, key vm.StackKey, snap vm.Snapshot) vm.Instance {
	return vm.Instance{
		ID:         m.id,
		Stack:      key,
		Snapshot:   snap,
		PID:        m.proc.vmmPID(),
		Socket:     m.client.Socket(),
		Dir:        m.dir,
		RestoredAt: m.restoredAt,
	}
}

// Check reports whether the VM's process runs and its guest sent a
// heartbeat within HeartbeatTimeout. It makes no call to the VMM or guest.
func (p *Provider) Check(inst vm.Instance) error {
	m := p.lookup(inst.ID)
	if m == nil {
		return fmt.Errorf("firecracker: check %s: VM not known to this provider: reattach or destroy it", inst.ID)
	}
	if !m.proc.alive() {
		return fmt.Errorf("firecracker: check %s: %w", inst.ID, m.proc.exitError())
	}
	last := m.heartbeats.lastHeartbeat()
	if last.IsZero() {
		last = m.restoredAt
	}
	if age := time.Since(last); age > p.cfg.HeartbeatTimeout {
		return fmt.Errorf("firecracker: check %s: last guest heartbeat %v ago, limit %v", inst.ID, age.Round(time.Millisecond), p.cfg.HeartbeatTimeout)
	}
	return nil
}

// Probe pings the guest agent through vsock within ctx's deadline.
func (p *Provider) Probe(ctx context.Context, inst vm.Instance) error {
	m := p.lookup(inst.ID)
	if m == nil {
		return fmt.Errorf("firecracker: probe %s: VM not known to this provider: reattach or destroy it", inst.ID)
	}
	if !m.proc.alive() {
		return fmt.Errorf("firecracker: probe %s: %w", inst.ID, m.proc.exitError())
	}
	if err := ping(ctx, m.vsockPath, p.cfg.AgentPort); err != nil {
		return fmt.Errorf("firecracker: probe %s: %w", inst.ID, err)
	}
	return nil
}
