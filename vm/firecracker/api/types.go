package api

// Request and response bodies of the Firecracker API, with the JSON names
// the API uses. Optional fields are pointers or omitempty so that an unset
// field is left out of the request instead of sent as a zero value.

// InstanceInfo is the body of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running" or "Paused"
	VMMVersion string `json:"vmm_version"`
}

// Instance states reported in InstanceInfo.State.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// MachineConfig is the body of PUT /machine-config.
type MachineConfig struct {
	VCPUCount       int    `json:"vcpu_count"`
	MemSizeMiB      int    `json:"mem_size_mib"`
	SMT             *bool  `json:"smt,omitempty"`
	TrackDirtyPages *bool  `json:"track_dirty_pages,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"` // "None" or "2M"
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	PartUUID     string `json:"partuuid,omitempty"`
	CacheType    string `json:"cache_type,omitempty"` // "Unsafe" or "Writeback"
	IOEngine     string `json:"io_engine,omitempty"`  // "Sync" or "Async"
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
}

// Vsock is the body of PUT /vsock. Firecracker listens on UDSPath for
// host-initiated connections and connects to UDSPath + "_<port>" for
// guest-initiated ones. A relative path is resolved against the working
// directory of the Firecracker process.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Entropy is the body of PUT /entropy.
type Entropy struct{}

// Logger is the body of PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     *bool  `json:"show_level,omitempty"`
	ShowLogOrigin *bool  `json:"show_log_origin,omitempty"`
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
)

// Action is the body of PUT /actions.
type Action struct {
	ActionType string `json:"action_type"`
}

// VM states of PATCH /vm.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// VMState is the body of PATCH /vm.
type VMState struct {
	State string `json:"state"`
}

// SnapshotCreate is the body of PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type,omitempty"` // "Full" or "Diff"
}

// Memory backend types of SnapshotLoad.MemBackend.
const (
	BackendFile = "File"
	BackendUffd = "Uffd"
)

// MemoryBackend is the source of a restored VM's memory: a file, or a
// userfaultfd handler listening on a unix socket.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces the host TAP device of one network interface on
// snapshot load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride replaces the vsock device's unix socket path on snapshot load.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoad is the body of PUT /snapshot/load. Exactly one of
// MemFilePath (deprecated by Firecracker) and MemBackend must be set.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemFilePath      string            `json:"mem_file_path,omitempty"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
}

// Fault is the error body Firecracker sends with a failed request.
type Fault struct {
	FaultMessage string `json:"fault_message"`
}
