// Package vm defines the contract between the warm pool and the virtual
// machine monitors that run its VMs.
//
// The pool never speaks to a VMM itself: every VM state change (restore,
// health check, destroy) goes through a Provider. Implementations live in
// the sub-packages sim (in memory), qemu and firecracker.
package vm

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// StackKey identifies a bucket of interchangeable VMs: the same guest stack
// at the same version with the same machine shape.
type StackKey struct {
	Name      string `json:"name" yaml:"name"`
	Version   string `json:"version" yaml:"version"`
	VCPUs     int    `json:"vcpus" yaml:"vcpus"`
	MemoryMiB int    `json:"memory_mib" yaml:"memory_mib"`
}

// String returns the key as "name@version/2cpu/512MiB".
func (k StackKey) String() string {
	return fmt.Sprintf("%s@%s/%dcpu/%dMiB", k.Name, k.Version, k.VCPUs, k.MemoryMiB)
}

var keyPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate reports the first invalid field of the key. Name and version are
// 1 to 64 characters of letters, digits, '.', '_' and '-', starting with a
// letter or digit, so that both can be used in file names and metric labels.
func (k StackKey) Validate() error {
	if !keyPart.MatchString(k.Name) {
		return fmt.Errorf("stack key: invalid name %q: use 1-64 letters, digits, '.', '_' or '-'", k.Name)
	}
	if !keyPart.MatchString(k.Version) {
		return fmt.Errorf("stack key: invalid version %q: use 1-64 letters, digits, '.', '_' or '-'", k.Version)
	}
	if k.VCPUs < 1 || k.VCPUs > 256 {
		return fmt.Errorf("stack key: invalid vcpus %d: must be 1-256", k.VCPUs)
	}
	if k.MemoryMiB < 16 || k.MemoryMiB > 1<<20 {
		return fmt.Errorf("stack key: invalid memory_mib %d: must be 16-1048576", k.MemoryMiB)
	}
	return nil
}

// Snapshot is a reference to a provider's saved VM state from which clones
// are restored. Its files belong to the snapshot's creator: a provider reads
// them and never writes them.
type Snapshot struct {
	// ID names the snapshot, for logs and metrics.
	ID string `json:"id" yaml:"id"`
	// Provider is the name of the provider that made the snapshot.
	Provider string `json:"provider" yaml:"provider"`
	// Path is the provider-specific location of the snapshot, usually a
	// directory holding its state and memory files.
	Path string `json:"path" yaml:"path"`
}

// Instance describes one running VM: enough to check it, destroy it, and find
// it again after the process that started it has exited.
type Instance struct {
	ID         string    `json:"id"`
	Stack      StackKey  `json:"stack"`
	Snapshot   Snapshot  `json:"snapshot"`
	PID        int       `json:"pid,omitempty"`
	Socket     string    `json:"socket,omitempty"`
	Dir        string    `json:"dir,omitempty"`
	Files      []string  `json:"files,omitempty"`
	RestoredAt time.Time `json:"restored_at"`
}

// Provider performs every VM state change on behalf of the pool.
//
// All methods are safe for concurrent use. Restore and Destroy may block on
// the VMM and must honour ctx. Check is called on the acquire path and must
// not block.
type Provider interface {
	// Name returns the provider's short name, such as "sim" or "qemu".
	Name() string

	// Restore starts a new VM with the given id from snap and returns once
	// the guest has replied to a health probe. The id is chosen by the caller
	// and is safe as a path component (see ValidateID). The returned
	// Instance has that ID and Stack key, and the pool destroys one that
	// does not. On failure the provider removes whatever it started, so
	// nothing is left behind.
	Restore(ctx context.Context, id string, key StackKey, snap Snapshot) (Instance, error)

	// Check reports whether a restored VM is still usable, from state the
	// provider keeps up to date in the background (the VMM process being
	// alive and the age of the guest's last heartbeat). It costs
	// microseconds, makes no call to the VMM or the guest, and returns an
	// error that describes what is wrong.
	Check(inst Instance) error

	// Probe performs a full round trip to the guest with ctx's deadline.
	// A guest can hang while its VMM still responds, so Probe talks to the
	// guest itself.
	Probe(ctx context.Context, inst Instance) error

	// Destroy stops the VM and removes its sockets and files. It accepts an
	// Instance that has only ID set (a VM whose restore was interrupted, or
	// one recorded by a process that crashed) and removes whatever is left
	// of it. Destroying a VM that no longer exists returns nil.
	Destroy(ctx context.Context, inst Instance) error
}

// Reattacher is implemented by providers whose VMs can outlive the process
// that started them. After a restart, Reattach reconnects to a recorded VM
// so that Check and Probe work on it again. It returns an error if the VM is
// gone or is not the one recorded, and then the caller destroys it.
type Reattacher interface {
	Reattach(ctx context.Context, inst Instance) error
}

// SnapshotChecker is implemented by providers that can tell, without a
// restore, whether a snapshot can ever give a VM for a stack: that it was
// made by this provider, its files are intact, and its machine shape
// matches the key. Callers use it to reject a bad stack when it is
// registered instead of retrying its restores forever.
type SnapshotChecker interface {
	CheckSnapshot(key StackKey, snap Snapshot) error
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// ErrInvalidID is returned by ValidateID.
var ErrInvalidID = errors.New("vm: invalid VM id")

// ValidateID checks that id is 1 to 64 letters, digits, '_' or '-' starting
// with a letter or digit, so it can be used as a file name and never escapes
// the directory it is joined to.
func ValidateID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w %q: use 1-64 letters, digits, '_' or '-', starting with a letter or digit", ErrInvalidID, id)
	}
	return nil
}
