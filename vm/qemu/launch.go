package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// maxSocketPath is the longest path a Unix socket address can hold on
// Linux (108 bytes including the terminating NUL).
const maxSocketPath = 107

// launchSpec is the QEMU command line and memory mapping of one launch.
type launchSpec struct {
	// workDir is QEMU's working directory, against which relative paths
	// in machineArgs resolve.
	workDir     string
	machineArgs []string
	memoryMiB   int
	memoryPath  string
	// shared maps memoryPath shared instead of copy-on-write.
	shared bool
	// incoming starts QEMU waiting for an incoming migration.
	incoming bool
}

// launch creates the VM directory, starts QEMU paused with listening QMP
// and agent sockets it inherits, and connects to both. On failure it
// removes everything it created.
func (p *Provider) launch(ctx context.Context, id string, spec launchSpec) (*machine, error) {
	dir := p.vmDir(id)
	if longest := filepath.Join(dir, agentSocket); len(longest) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is longer than %d bytes: use a shorter state_dir", longest, maxSocketPath)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("VM id %s is already in use: %s exists", id, dir)
		}
		return nil, err
	}

	proc, err := p.startQEMU(id, dir, spec)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}

	m := &machine{id: id, dir: dir, proc: proc}
	m.mon, err = dialMonitor(ctx, filepath.Join(dir, qmpSocket))
	if err == nil {
		m.agent, err = dialAgent(filepath.Join(dir, agentSocket))
	}
	if err != nil {
		err = fmt.Errorf("%w%s", err, proc.output())
		return nil, errors.Join(err, p.discard(m))
	}
	return m, nil
}

func (p *Provider) startQEMU(id, dir string, spec launchSpec) (*process, error) {
	qmpListener, err := listenUnix(filepath.Join(dir, qmpSocket))
	if err != nil {
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	defer qmpListener.Close()
	agentListener, err := listenUnix(filepath.Join(dir, agentSocket))
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	defer agentListener.Close()

	// ExtraFiles become descriptors 3, 4, ... in the child.
	args := slices.Concat(spec.machineArgs, instanceArgs(instanceSpec{
		ID:           id,
		MemoryMiB:    spec.memoryMiB,
		MemoryPath:   spec.memoryPath,
		SharedMemory: spec.shared,
		Incoming:     spec.incoming,
		QMPFD:        3,
		AgentFD:      4,
	}))
	files := []*os.File{qmpListener, agentListener}
	proc, err := startProcess(p.cfg.Binary, args, spec.workDir, dir, files, p.cfg.Detached)
	if err != nil {
		return nil, err
	}

	pidPath := filepath.Join(dir, pidFile)
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(proc.pid)+"\n"), 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("write pid file: %w", err), proc.kill(p.cfg.StopTimeout))
	}
	return proc, nil
}
