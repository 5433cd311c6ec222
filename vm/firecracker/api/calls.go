package api

import (
	"context"
	"fmt"
	"net/url"
)

// Describe returns the instance information of GET / and records the
// reported version for the version gates of later calls.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	if err := c.do(ctx, "GET", "/", nil, &info); err != nil {
		return InstanceInfo{}, err
	}
	v, err := ParseVersion(info.VMMVersion)
	if err != nil {
		return InstanceInfo{}, fmt.Errorf("firecracker api: GET /: %w", err)
	}
	c.mu.Lock()
	c.version = v
	c.mu.Unlock()
	return info, nil
}

// Version returns the Firecracker version, calling GET / the first time.
func (c *Client) Version(ctx context.Context) (Version, error) {
	c.mu.Lock()
	v := c.version
	c.mu.Unlock()
	if !v.IsZero() {
		return v, nil
	}
	info, err := c.Describe(ctx)
	if err != nil {
		return Version{}, err
	}
	return ParseVersion(info.VMMVersion)
}

// PutMachineConfig sets vCPUs and memory. Pre-boot only.
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	return c.do(ctx, "PUT", "/machine-config", mc, nil)
}

// PutBootSource sets the kernel, initrd and boot arguments. Pre-boot only.
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.do(ctx, "PUT", "/boot-source", bs, nil)
}

// PutDrive adds or replaces the block device d.DriveID. Pre-boot only.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, "PUT", "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutNetworkInterface adds the network interface n.IfaceID. Pre-boot only.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, "PUT", "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutVsock adds the vsock device. Pre-boot only.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, "PUT", "/vsock", v, nil)
}

// PutEntropy adds a virtio-rng device. Pre-boot only.
func (c *Client) PutEntropy(ctx context.Context, e Entropy) error {
	return c.do(ctx, "PUT", "/entropy", e, nil)
}

// PutLogger sets where Firecracker writes its log.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, "PUT", "/logger", l, nil)
}

// PutMetrics sets where Firecracker writes its metrics.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, "PUT", "/metrics", m, nil)
}

// InstanceStart boots the configured VM.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.do(ctx, "PUT", "/actions", Action{ActionType: ActionInstanceStart}, nil)
}

// SendCtrlAltDel injects Ctrl+Alt+Del so the guest shuts down (x86 only). The call returns
// once the key press is injected, not when the guest has stopped.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.do(ctx, "PUT", "/actions", Action{ActionType: ActionSendCtrlAltDel}, nil)
}

// Pause pauses the vCPUs.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, "PATCH", "/vm", VMState{State: VMPaused}, nil)
}

// Resume resumes paused vCPUs.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, "PATCH", "/vm", VMState{State: VMResumed}, nil)
}

// CreateSnapshot writes the VM state and memory. The VM must be paused.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, "PUT", "/snapshot/create", s, nil)
}

// LoadSnapshot restores a snapshot into a fresh process. It checks the
// request first: exactly one memory source, and only fields that the
// running version accepts (see CheckLoad), so a request that cannot work
// fails without being sent.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	if err := checkMemorySource(s); err != nil {
		return err
	}
	if len(s.NetworkOverrides) > 0 || s.VsockOverride != nil {
		v, err := c.Version(ctx)
		if err != nil {
			return fmt.Errorf("firecracker api: snapshot load: read version: %w", err)
		}
		if err := CheckLoad(v, s); err != nil {
			return err
		}
	}
	return c.do(ctx, "PUT", "/snapshot/load", s, nil)
}

func checkMemorySource(s SnapshotLoad) error {
	switch {
	case s.MemFilePath != "" && s.MemBackend != nil:
		return fmt.Errorf("firecracker api: snapshot load: set mem_backend or mem_file_path, not both")
	case s.MemFilePath == "" && s.MemBackend == nil:
		return fmt.Errorf("firecracker api: snapshot load: missing memory source: set mem_backend or mem_file_path")
	}
	return nil
}
