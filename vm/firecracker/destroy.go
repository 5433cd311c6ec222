package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// Destroy stops the VM and removes its process, sockets, files, TAP devices
// and network namespace. It works from the id alone, reading what the VM
// owns from the record in its directory, and returns nil when nothing of
// the VM is left. A Restore or Template of the same id that is still in
// progress is canceled first, and Destroy waits until it has stopped. If
// ctx ends while it waits for the process to exit, the process has been
// sent SIGKILL and the error reports the timeout.
func (p *Provider) Destroy(ctx context.Context, inst vm.Instance) error {
	if _, err := p.cfg.ownedDir(inst.ID); err != nil {
		return fmt.Errorf("firecracker: destroy: %w", err)
	}
	p.mu.Lock()
	m := p.vms[inst.ID]
	delete(p.vms, inst.ID)
	pending := p.inFlight[inst.ID]
	p.mu.Unlock()

	if m == nil && pending != nil {
		// Cancel the restore or template, which then tears down what it
		// created, unless it finished first and now tracks the VM.
		pending.cancel()
		select {
		case <-pending.done:
		case <-ctx.Done():
			return fmt.Errorf("firecracker: destroy %s: wait for its restore to stop: %w", inst.ID, ctx.Err())
		}
		p.mu.Lock()
		m = p.vms[inst.ID]
		delete(p.vms, inst.ID)
		p.mu.Unlock()
	}
	if m == nil {
		m = p.recover(inst)
	}
	if err := p.teardown(ctx, m); err != nil {
		return fmt.Errorf("firecracker: destroy %s: %w", inst.ID, err)
	}
	return nil
}

// recover rebuilds what is known of a VM that this provider does not track
// from its record file. A process is included only if it still runs the
// VM's command line.
func (p *Provider) recover(inst vm.Instance) *machine {
	dir := p.cfg.vmDir(inst.ID)
	m := &machine{id: inst.ID, dir: dir, vsockPath: filepath.Join(dir, vsockName)}
	if data, err := os.ReadFile(filepath.Join(p.cfg.recordDir(inst.ID), recordName)); err == nil {
		json.Unmarshal(data, &m.record)
	}
	pid := m.record.PID
	if pid == 0 {
		pid = inst.PID
	}
	if pid > 0 && p.ownsProcess(pid, inst.ID) {
		if proc, err := watchPID(pid, ""); err == nil {
			m.proc = proc
		}
	}
	return m
}

// ownsProcess reports whether pid runs this provider's VMM for id.
func (p *Provider) ownsProcess(pid int, id string) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil || cwd != p.cfg.vmDir(id) {
		return false
	}
	return processMatches(pid, "--id", id)
}

// teardown stops the process and removes everything m records. It keeps
// going after a failed step and returns every error joined.
func (p *Provider) teardown(ctx context.Context, m *machine) error {
	var errs []error
	if m.proc != nil {
		errs = append(errs, p.stop(ctx, m))
	}
	if m.heartbeats != nil {
		if m.proc == nil || !m.proc.alive() {
			m.heartbeats.close()
		} else {
			m.heartbeats.closeNow()
		}
	}
	if m.client != nil {
		m.client.Close()
	}

	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// Only what the record names is removed: a namespace or TAP device
	// that prepare failed to create may belong to someone else.
	netns := m.record.Netns
	for _, tap := range m.record.TAPs {
		if err := deleteTAP(cleanupCtx, netns, tap); err != nil {
			errs = append(errs, err)
		}
	}
	if netns != "" {
		if err := deleteNetns(cleanupCtx, netns); err != nil {
			errs = append(errs, err)
		}
	}

	if dir, err := p.cfg.ownedDir(m.id); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove VM directory: %w", err))
	}
	if dir := p.cfg.recordDir(m.id); p.cfg.Jailer != nil {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove record directory: %w", err))
		}
	}
	if m.countsRef {
		m.countsRef = false
		errs = append(errs, p.releaseSnapshot(m.record.Snapshot))
	}
	return errors.Join(errs...)
}

// stop sends SendCtrlAltDel when ShutdownGrace is set, kills the
// process group if it is still running after the grace period, and waits
// until the process has exited.
func (p *Provider) stop(ctx context.Context, m *machine) error {
	proc := m.proc
	if !proc.alive() {
		return nil
	}
	if grace := p.cfg.ShutdownGrace; grace > 0 {
		client := m.client
		if client == nil {
			client = api.New(filepath.Join(m.dir, apiSocketName), p.cfg.APITimeout)
			defer client.Close()
		}
		callCtx, cancel := context.WithTimeout(ctx, min(grace, p.cfg.APITimeout))
		err := client.SendCtrlAltDel(callCtx)
		cancel()
		if err == nil {
			select {
			case <-proc.exited:
				return nil
			case <-time.After(grace):
			case <-ctx.Done():
			}
		}
	}

	proc.kill()
	select {
	case <-proc.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for process %d to exit after SIGKILL: %w", proc.pid, ctx.Err())
	}
}

// Reattach takes over a VM started by another Provider, normally a
// previous run of a daemon with Detached set. It checks that the recorded
// process still runs the VM's command line and responds on its API socket,
// then listens for its heartbeats again.
func (p *Provider) Reattach(ctx context.Context, inst vm.Instance) error {
	if err := p.reattach(ctx, inst); err != nil {
		return fmt.Errorf("firecracker: reattach %s: %w", inst.ID, err)
	}
	return nil
}

func (p *Provider) reattach(ctx context.Context, inst vm.Instance) error {
	if _, err := p.cfg.ownedDir(inst.ID); err != nil {
		return err
	}
	if p.lookup(inst.ID) != nil {
		return errors.New("VM is already attached")
	}
	m := p.recover(inst)
	if m.proc == nil {
		return fmt.Errorf("no running firecracker process for the VM (recorded pid %d)", m.record.PID)
	}
	if inst.PID != 0 && inst.PID != m.proc.pid {
		return fmt.Errorf("recorded pid %d differs from the instance's pid %d", m.record.PID, inst.PID)
	}
	m.proc.outFile = filepath.Join(m.dir, outputName)
	m.client = api.New(filepath.Join(m.dir, apiSocketName), p.cfg.APITimeout)
	info, err := m.client.Describe(ctx)
	if err != nil {
		m.client.Close()
		return err
	}
	if info.State != api.StateRunning {
		m.client.Close()
		return fmt.Errorf("VM state is %q, want %q", info.State, api.StateRunning)
	}

	uid, gid := p.owner()
	hb, err := listenHeartbeats(m.vsockPath+"_"+strconv.FormatUint(uint64(p.cfg.HeartbeatPort), 10), uid, gid)
	if err != nil {
		m.client.Close()
		return err
	}
	m.heartbeats = hb
	m.restoredAt = inst.RestoredAt
	if m.restoredAt.IsZero() {
		m.restoredAt = time.Now()
	}
	if m.record.Snapshot != "" {
		p.acquireSnapshot(m.record.Snapshot)
		m.countsRef = true
	}

	p.mu.Lock()
	raced := p.vms[inst.ID] != nil
	if !raced {
		p.vms[inst.ID] = m
	}
	p.mu.Unlock()
	if raced {
		// Another Reattach of the same id won: undo this one.
		hb.closeNow()
		m.client.Close()
		if m.countsRef {
			p.releaseSnapshot(m.record.Snapshot)
		}
		return errors.New("VM is already attached")
	}
	return nil
}
