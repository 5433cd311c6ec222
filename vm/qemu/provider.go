// Package qemu is a vm.Provider that runs each VM as a QEMU process restored
// from a template snapshot.
//
// A template is a guest booted once with its RAM in a shared file-backed
// memory backend, then stopped and migrated to a file with the
// x-ignore-shared capability, so the file holds only device state. A clone
// is a new QEMU with the same machine arguments whose RAM maps the
// template's memory file privately (copy-on-write). It loads the device
// state through an incoming migration and continues where the template
// stopped, without booting.
//
// Each VM runs under StateDir/ID with its QMP socket, the socket of the
// guest agent's serial port and a pid file, so Destroy and Reattach can find
// a VM from its id alone.
package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// ProviderName is the name that Provider.Name returns and snapshots record.
const ProviderName = "qemu"

// Names of the sockets in a VM directory.
const (
	qmpSocket   = "qmp.sock"
	agentSocket = "agent.sock"
)

// Provider runs VMs as QEMU processes. It implements vm.Provider and
// vm.Reattacher.
type Provider struct {
	cfg Config
	log *slog.Logger

	mu  sync.Mutex // guards vms, and is never held during QMP, agent or process calls
	vms map[string]*machine
}

// machine is a running QEMU process and the host's connections to it.
type machine struct {
	id    string
	dir   string
	proc  *process
	mon   *monitor
	agent *agentConn
}

var (
	_ vm.Provider   = (*Provider)(nil)
	_ vm.Reattacher = (*Provider)(nil)
)

// New returns a Provider for cfg after validating it and creating its
// state directory.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu: create state_dir: %w", err)
	}

	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Provider{cfg: cfg, log: logger, vms: map[string]*machine{}}, nil
}

// Name returns "qemu".
func (p *Provider) Name() string { return ProviderName }

// Config returns the provider's configuration with defaults filled in.
func (p *Provider) Config() Config { return p.cfg }

// Restore starts a clone of snap as VM id and returns once the guest has
// acknowledged fresh host randomness for its kernel RNG. It rejects a key whose vCPUs or memory differ from the
// snapshot's. On failure it kills the QEMU it started and removes the VM
// directory, and the error carries the tail of QEMU's stderr and console.
func (p *Provider) Restore(ctx context.Context, id string, key vm.StackKey, snap vm.Snapshot) (vm.Instance, error) {
	if err := vm.ValidateID(id); err != nil {
		return vm.Instance{}, fmt.Errorf("qemu restore: %w", err)
	}
	if err := key.Validate(); err != nil {
		return vm.Instance{}, fmt.Errorf("qemu restore %s: %w", id, err)
	}
	meta, err := readSnapshotFor(key, snap)
	if err != nil {
		return vm.Instance{}, fmt.Errorf("qemu restore %s: %w", id, err)
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.RestoreTimeout)
		defer cancel()
	}

	m, err := p.launch(ctx, id, launchSpec{
		workDir:     snap.Path,
		machineArgs: meta.machineArgs(),
		memoryMiB:   meta.Key.MemoryMiB,
		memoryPath:  filepath.Join(snap.Path, MemoryFile),
		incoming:    true,
	})
	if err != nil {
		return vm.Instance{}, fmt.Errorf("qemu restore %s: %w", id, err)
	}
	if err := resume(ctx, m, filepath.Join(snap.Path, StateFile)); err != nil {
		err = fmt.Errorf("qemu restore %s: %w%s", id, err, m.proc.output())
		return vm.Instance{}, errors.Join(err, p.discard(m))
	}

	p.mu.Lock()
	p.vms[id] = m
	p.mu.Unlock()
	return m.instance(key, snap), nil
}

// resume loads the template's device state into a clone started with
// -incoming defer, lets it run, and reseeds the guest's kernel RNG. The
// guest's acknowledgement of the seed is its first reply, so a clone
// counts as ready only once its RNG differs from the template's.
func resume(ctx context.Context, m *machine, statePath string) error {
	if err := m.mon.setIgnoreShared(ctx); err != nil {
		return err
	}
	uri := "exec:cat " + shellQuote(statePath)
	if err := m.mon.run(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return err
	}
	if err := m.mon.waitMigration(ctx); err != nil {
		return fmt.Errorf("load device state: %w", err)
	}
	if err := m.mon.run(ctx, "cont", nil, nil); err != nil {
		return err
	}
	return m.agent.seed(ctx)
}

// Check reports whether VM inst is usable from state kept by background
// goroutines: the QEMU process has not exited, the agent connection is
// open and the guest's last heartbeat is younger than HeartbeatMaxAge. It
// does no I/O.
func (p *Provider) Check(inst vm.Instance) error {
	m, err := p.lookup(inst.ID)
	if err != nil {
		return err
	}
	if !m.proc.alive() {
		return fmt.Errorf("qemu: VM %s: qemu pid %d exited: %v", inst.ID, m.proc.pid, m.proc.err)
	}
	age, err := m.agent.heartbeatAge(time.Now())
	if err != nil {
		return fmt.Errorf("qemu: VM %s: %w", inst.ID, err)
	}
	if age > p.cfg.HeartbeatMaxAge {
		return fmt.Errorf("qemu: VM %s: last heartbeat %s ago, more than heartbeat_max_age %s",
			inst.ID, age.Round(time.Millisecond), p.cfg.HeartbeatMaxAge)
	}
	return nil
}

// Probe sends a ping to the guest agent and waits for its pong until ctx
// ends.
func (p *Provider) Probe(ctx context.Context, inst vm.Instance) error {
	m, err := p.lookup(inst.ID)
	if err != nil {
		return err
	}
	if !m.proc.alive() {
		return fmt.Errorf("qemu: VM %s: qemu pid %d exited: %v", inst.ID, m.proc.pid, m.proc.err)
	}
	if err := m.agent.ping(ctx); err != nil {
		return fmt.Errorf("qemu: VM %s: %w", inst.ID, err)
	}
	return nil
}

// Destroy stops VM inst and removes its directory. For a VM this provider
// does not track, such as one recorded by a process that crashed, it finds
// the pid file under StateDir by inst.ID and kills that pid only after
// /proc/PID/cmdline shows it is this VM's QEMU. A VM with nothing left
// returns nil. When QEMU cannot be stopped, the directory is kept so a
// later Destroy can retry.
func (p *Provider) Destroy(ctx context.Context, inst vm.Instance) error {
	if err := vm.ValidateID(inst.ID); err != nil {
		return fmt.Errorf("qemu destroy: %w", err)
	}

	p.mu.Lock()
	m := p.vms[inst.ID]
	delete(p.vms, inst.ID)
	p.mu.Unlock()

	if m != nil {
		return p.discard(m)
	}
	dir := p.vmDir(inst.ID)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := p.stopRecorded(ctx, inst.ID, dir); err != nil {
		return fmt.Errorf("qemu destroy %s: %w", inst.ID, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("qemu destroy %s: %w", inst.ID, err)
	}
	return nil
}

// discard stops a machine's QEMU, closes its connections and removes its
// directory.
func (p *Provider) discard(m *machine) error {
	if err := p.stop(m); err != nil {
		return fmt.Errorf("qemu destroy %s: %w", m.id, err)
	}
	if err := os.RemoveAll(m.dir); err != nil {
		return fmt.Errorf("qemu destroy %s: %w", m.id, err)
	}
	return nil
}

// stop sends the QMP quit command and then SIGKILL when QEMU has not
// exited after StopTimeout.
func (p *Provider) stop(m *machine) error {
	if m.agent != nil {
		m.agent.close()
	}
	if m.mon != nil && m.proc.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.StopTimeout)
		// The reply to quit may be lost when QEMU exits first, so the
		// error is ignored and only the exit counts.
		_ = m.mon.run(ctx, "quit", nil, nil)
		select {
		case <-m.proc.exited:
		case <-ctx.Done():
			p.log.Warn("qemu did not quit in time, killing it", "vm_id", m.id, "pid", m.proc.pid,
				"stop_timeout", p.cfg.StopTimeout)
		}
		cancel()
	}
	if m.mon != nil {
		m.mon.close()
	}
	return m.proc.kill(p.cfg.StopTimeout)
}

// stopRecorded stops the QEMU of a VM that this provider does not track,
// using the pid file in dir.
func (p *Provider) stopRecorded(ctx context.Context, id, dir string) error {
	pid, err := readPIDFile(dir)
	if err != nil {
		// A process that was killed between starting QEMU and writing the
		// pid file leaves a running QEMU without one, so look for it by
		// the VM id in its command line.
		found, ok := findProcess(id)
		if !ok {
			if errors.Is(err, os.ErrNotExist) {
				return nil // QEMU never started
			}
			return err
		}
		pid = found
	}

	proc, err := watchProcess(pid, dir)
	if err != nil {
		return nil // the process is gone
	}
	if err := verifyProcess(pid, id); err != nil {
		// The pid is gone or now belongs to another process, so
		// nothing of this VM is left running.
		p.log.Info("recorded qemu pid is not running this VM", "vm_id", id, "pid", pid, "reason", err)
		return nil
	}

	m := &machine{id: id, dir: dir, proc: proc}
	dialCtx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
	defer cancel()
	if mon, err := dialMonitor(dialCtx, filepath.Join(dir, qmpSocket)); err == nil {
		m.mon = mon
	}
	return p.stop(m)
}

// Reattach takes over a VM started in detached mode by an earlier process:
// it verifies the recorded pid, reconnects QMP and the agent, and waits for
// a pong. On error the VM is left as it was, for the caller to destroy.
func (p *Provider) Reattach(ctx context.Context, inst vm.Instance) error {
	if err := vm.ValidateID(inst.ID); err != nil {
		return fmt.Errorf("qemu reattach: %w", err)
	}
	if _, err := p.lookup(inst.ID); err == nil {
		return nil
	}

	dir := p.vmDir(inst.ID)
	pid, err := readPIDFile(dir)
	if err != nil {
		return fmt.Errorf("qemu reattach %s: %w", inst.ID, err)
	}
	if inst.PID != 0 && inst.PID != pid {
		return fmt.Errorf("qemu reattach %s: recorded pid %d differs from pid file's %d", inst.ID, inst.PID, pid)
	}
	if err := verifyProcess(pid, inst.ID); err != nil {
		return fmt.Errorf("qemu reattach %s: %w", inst.ID, err)
	}

	m, err := p.connect(ctx, inst.ID, dir, pid)
	if err != nil {
		return fmt.Errorf("qemu reattach %s: %w", inst.ID, err)
	}

	p.mu.Lock()
	p.vms[inst.ID] = m
	p.mu.Unlock()
	p.log.Info("reattached qemu VM", "vm_id", inst.ID, "pid", pid)
	return nil
}

func (p *Provider) connect(ctx context.Context, id, dir string, pid int) (*machine, error) {
	proc, err := watchProcess(pid, dir)
	if err != nil {
		return nil, err
	}
	mon, err := dialMonitor(ctx, filepath.Join(dir, qmpSocket))
	if err != nil {
		return nil, err
	}

	var status struct {
		Status string `json:"status"`
	}
	if err := mon.run(ctx, "query-status", nil, &status); err != nil {
		mon.close()
		return nil, err
	}
	if status.Status != "running" {
		mon.close()
		return nil, fmt.Errorf("VM is %s, not running", status.Status)
	}

	agent, err := dialAgent(filepath.Join(dir, agentSocket))
	if err != nil {
		mon.close()
		return nil, err
	}
	if err := agent.ping(ctx); err != nil {
		agent.close()
		mon.close()
		return nil, err
	}
	return &machine{id: id, dir: dir, proc: proc, mon: mon, agent: agent}, nil
}

// MemoryPSS returns the proportional set size of VM inst's QEMU process
// in bytes, from /proc/PID/smaps_rollup. Pages of the template's memory
// file shared by several clones count once in total across them, so the
// value is the host memory this clone adds.
//
// NOTE: it reads the process that the provider started. When the QEMU
// binary is a wrapper script that does not exec QEMU, that is the shell,
// and QEMU's own memory is not counted.
func (p *Provider) MemoryPSS(inst vm.Instance) (int64, error) {
	m, err := p.lookup(inst.ID)
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/" + strconv.Itoa(m.proc.pid) + "/smaps_rollup")
	if err != nil {
		return 0, fmt.Errorf("qemu: VM %s: %w", inst.ID, err)
	}
	defer f.Close()

	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 3 && fields[0] == "Pss:" && fields[2] == "kB" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("qemu: VM %s: invalid Pss line %q", inst.ID, scanner.Text())
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("qemu: VM %s: no Pss line in smaps_rollup", inst.ID)
}

func (p *Provider) lookup(id string) (*machine, error) {
	p.mu.Lock()
	m := p.vms[id]
	p.mu.Unlock()
	if m == nil {
		return nil, fmt.Errorf("qemu: VM %s is not running under this provider", id)
	}
	return m, nil
}

func (p *Provider) vmDir(id string) string {
	return filepath.Join(p.cfg.StateDir, id)
}

func (m *machine) instance(key vm.StackKey, snap vm.Snapshot) vm.Instance {
	return vm.Instance{
		ID:       m.id,
		Stack:    key,
		Snapshot: snap,
		PID:      m.proc.pid,
		Socket:   filepath.Join(m.dir, qmpSocket),
		Dir:      m.dir,
		Files: []string{
			filepath.Join(m.dir, agentSocket),
			filepath.Join(m.dir, pidFile),
		},
		RestoredAt: time.Now(),
	}
}

// checkKVM returns nil when /dev/kvm opens for reading and writing.
func checkKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// shellQuote quotes s for /bin/sh, which runs QEMU's exec: migration URIs.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// listenUnix creates a listening socket at path for QEMU to inherit. The
// socket file stays when the host's copy is closed, because QEMU keeps
// listening on it.
func listenUnix(path string) (*os.File, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	return l.File()
}
