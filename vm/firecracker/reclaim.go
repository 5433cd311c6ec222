package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// programID identifies a running program across pid reuse: its pid and
// its start time in clock ticks since boot, from /proc/<pid>/stat.
type programID struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// thisProgram is the programID of this process, or zero if /proc cannot
// be read.
var thisProgram = func() programID {
	start, err := processStartTime(os.Getpid())
	if err != nil {
		return programID{}
	}
	return programID{PID: os.Getpid(), Start: start}
}()

// running reports whether the program still runs. A zero programID,
// written when /proc could not be read, counts as running.
func (id programID) running() bool {
	if id.PID == 0 {
		return true
	}
	start, err := processStartTime(id.PID)
	return err == nil && start == id.Start
}

// processStartTime returns field 22 of /proc/<pid>/stat, the start time.
func processStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name in field 2 may contain spaces, so count the
	// fields after its closing parenthesis, which starts field 3.
	end := strings.LastIndexByte(string(data), ')')
	if end < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// reclaimStale destroys the VMs in the state directory whose records name
// an owner program that no longer runs and that were not started
// detached. Their VMMs died with that program, but a program killed with
// SIGKILL leaves their files, TAP devices and namespaces behind.
func (p *Provider) reclaimStale(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(p.cfg.StateDir, "vms"))
	if err != nil {
		return nil, err
	}
	var reclaimed []string
	var errs []error
	for _, e := range entries {
		id := e.Name()
		if vm.ValidateID(id) != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(p.cfg.recordDir(id), recordName))
		if err != nil {
			continue
		}
		var record vmRecord
		if json.Unmarshal(data, &record) != nil || record.Owner == nil || record.Detached || record.Owner.running() {
			continue
		}
		if err := p.Destroy(ctx, vm.Instance{ID: id}); err != nil {
			errs = append(errs, err)
			continue
		}
		reclaimed = append(reclaimed, id)
	}
	return reclaimed, errors.Join(errs...)
}

// reclaimTimeout bounds the cleanup that New does.
const reclaimTimeout = 30 * time.Second
