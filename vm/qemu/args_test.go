package qemu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
	"gopkg.in/yaml.v3"
)

// argValue returns the value after the first occurrence of flag in args.
func argValue(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func TestMachineArgsShape(t *testing.T) {
	key := vm.StackKey{Name: "a", Version: "1", VCPUs: 2, MemoryMiB: 512}
	args := machineArgs(key, AccelTCG, "vmlinuz", "initrd.img")

	checks := map[string]string{
		"-smp":     "2",
		"-m":       "512M",
		"-accel":   "tcg",
		"-cpu":     "qemu64",
		"-kernel":  "vmlinuz",
		"-initrd":  "initrd.img",
		"-machine": "pc,memory-backend=mem",
		"-append":  kernelCmdline,
	}
	for flag, want := range checks {
		if got := argValue(args, flag); got != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	if !slices.Contains(args, "-nodefaults") {
		t.Errorf("args lack -nodefaults: %q", args)
	}

	// The console must be the first serial port and the agent the second,
	// because the guest uses ttyS0 and ttyS1.
	var serials []string
	for i, a := range args {
		if a == "-serial" {
			serials = append(serials, args[i+1])
		}
	}
	if want := []string{"chardev:console", "chardev:agent"}; !slices.Equal(serials, want) {
		t.Errorf("serial ports = %q, want %q", serials, want)
	}

	if got := argValue(machineArgs(key, AccelKVM, "k", "i"), "-cpu"); got != "host" {
		t.Errorf("-cpu under kvm = %q, want host", got)
	}
}

func TestInstanceArgsMemoryMapping(t *testing.T) {
	clone := instanceArgs(instanceSpec{
		ID: "vm-1", MemoryMiB: 128, MemoryPath: "/snap/a,b/memory",
		Incoming: true, QMPFD: 3, AgentFD: 4,
	})
	object := argValue(clone, "-object")
	if !strings.Contains(object, "share=off") {
		t.Errorf("clone memory %q is not private", object)
	}
	if !strings.Contains(object, "mem-path=/snap/a,,b/memory,") {
		t.Errorf("clone memory %q does not escape the comma in its path", object)
	}
	if !strings.Contains(object, "size=128M") {
		t.Errorf("clone memory %q lacks size=128M", object)
	}
	if got := argValue(clone, "-incoming"); got != "defer" {
		t.Errorf("-incoming = %q, want defer", got)
	}
	if !slices.Contains(clone, "-S") {
		t.Errorf("clone args lack -S: %q", clone)
	}
	if got := argValue(clone, "-name"); got != "guest=warmpool-vm-1" {
		t.Errorf("-name = %q, want guest=warmpool-vm-1", got)
	}
	chardevs := strings.Join(clone, " ")
	for _, want := range []string{"socket,id=agent,fd=4,server=on", "socket,id=qmp,fd=3,server=on"} {
		if !strings.Contains(chardevs, want) {
			t.Errorf("args lack chardev %q: %q", want, clone)
		}
	}

	template := instanceArgs(instanceSpec{ID: "t", MemoryMiB: 64, MemoryPath: "/t/memory", SharedMemory: true})
	if object := argValue(template, "-object"); !strings.Contains(object, "share=on") {
		t.Errorf("template memory %q is not shared", object)
	}
	if slices.Contains(template, "-incoming") {
		t.Errorf("template args contain -incoming: %q", template)
	}
}

func validMetadata() Metadata {
	key := vm.StackKey{Name: "a", Version: "1", VCPUs: 1, MemoryMiB: 128}
	return Metadata{
		Format:      metadataFormat,
		Provider:    ProviderName,
		Key:         key,
		Accel:       AccelTCG,
		QEMUVersion: "7.2.22",
	}
}

func TestMetadataValidateRejects(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Metadata)
		want   string
	}{
		{"old format", func(m *Metadata) { m.Format = 1 }, "unsupported format 1"},
		{"other provider", func(m *Metadata) { m.Provider = "sim" }, `made by provider "sim"`},
		{"auto accel", func(m *Metadata) { m.Accel = AccelAuto }, "invalid accel"},
		{"missing version", func(m *Metadata) { m.QEMUVersion = "" }, "missing qemu_version"},
		{"invalid key", func(m *Metadata) { m.Key.VCPUs = 0 }, "invalid vcpus"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := validMetadata()
			tc.change(&m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestMetadataCheckKey(t *testing.T) {
	m := validMetadata()
	same := m.Key
	same.Name, same.Version = "other", "2"
	if err := m.CheckKey(same); err != nil {
		t.Errorf("CheckKey with the same shape: %v", err)
	}
	moreMemory := m.Key
	moreMemory.MemoryMiB = 256
	if err := m.CheckKey(moreMemory); err == nil {
		t.Errorf("CheckKey with more memory returned nil")
	}
	moreCPUs := m.Key
	moreCPUs.VCPUs = 4
	if err := m.CheckKey(moreCPUs); err == nil {
		t.Errorf("CheckKey with more vCPUs returned nil")
	}
}

func TestReadMetadataErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadMetadata(dir); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("ReadMetadata of empty dir = %v, want not-found error", err)
	}

	if err := os.WriteFile(filepath.Join(dir, MetadataFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMetadata(dir); err == nil || !strings.Contains(err.Error(), "invalid JSON") {
		t.Errorf("ReadMetadata of broken JSON = %v, want invalid JSON error", err)
	}

	// Valid metadata without the memory and state files is incomplete.
	os.Remove(filepath.Join(dir, MetadataFile))
	if err := writeMetadata(dir, validMetadata()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMetadata(dir); err == nil || !strings.Contains(err.Error(), MemoryFile) {
		t.Errorf("ReadMetadata without memory file = %v, want error naming %s", err, MemoryFile)
	}

	writeSnapshotFiles(t, dir, validMetadata())
	m, err := ReadMetadata(dir)
	if err != nil {
		t.Fatalf("ReadMetadata of complete snapshot: %v", err)
	}
	if m != validMetadata() {
		t.Errorf("metadata changed on the way through the file: %+v", m)
	}
}

// writeSnapshotFiles writes the data files of a snapshot with metadata m
// into dir, with a sparse memory file of the right size.
func writeSnapshotFiles(t *testing.T, dir string, m Metadata) {
	t.Helper()
	for _, name := range []string{MemoryFile, StateFile, KernelFile, InitrdFile} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(filepath.Join(dir, MemoryFile), m.memorySize()); err != nil {
		t.Fatal(err)
	}
}

// writeRawMetadata writes fields as the snapshot's metadata file.
func writeRawMetadata(t *testing.T, dir string, fields map[string]any) {
	t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, MetadataFile)
	os.Remove(path)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadMetadataRejectsInjectedArgs(t *testing.T) {
	dir := t.TempDir()
	m := validMetadata()
	writeSnapshotFiles(t, dir, m)
	fields := map[string]any{
		"format": m.Format, "provider": m.Provider, "key": m.Key,
		"accel": m.Accel, "qemu_version": m.QEMUVersion,
		"machine_args": []string{"--chardev", "file,id=pw,path=/tmp/pwned"},
	}
	writeRawMetadata(t, dir, fields)
	_, err := ReadMetadata(dir)
	if err == nil || !strings.Contains(err.Error(), "machine_args") {
		t.Errorf("ReadMetadata with machine_args = %v, want an error naming the field", err)
	}

	// The format that stored raw arguments is rejected as a whole.
	fields["format"] = 1
	delete(fields, "provider")
	writeRawMetadata(t, dir, fields)
	_, err = ReadMetadata(dir)
	if err == nil || !strings.Contains(err.Error(), "unsupported format 1") {
		t.Errorf("ReadMetadata of format 1 = %v, want unsupported format", err)
	}
}

func TestCloneArgsFollowMetadata(t *testing.T) {
	m := validMetadata()
	m.Key.VCPUs = 2
	m.Accel = AccelKVM
	args := m.machineArgs()
	if got := argValue(args, "-smp"); got != "2" {
		t.Errorf("-smp = %q, want 2", got)
	}
	if got := argValue(args, "-accel"); got != AccelKVM {
		t.Errorf("-accel = %q, want kvm", got)
	}
	for _, flag := range []string{"-object", "-chardev", "-drive", "-D", "-pidfile", "-monitor", "-qmp"} {
		if slices.Contains(args, flag) {
			t.Errorf("machine args contain %s: %q", flag, args)
		}
	}
}

func TestReadMetadataChecksMemorySize(t *testing.T) {
	dir := t.TempDir()
	m := validMetadata()
	writeSnapshotFiles(t, dir, m)
	if err := writeMetadata(dir, m); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, MemoryFile), 0); err != nil {
		t.Fatal(err)
	}
	_, err := ReadMetadata(dir)
	if err == nil || !strings.Contains(err.Error(), "memory file has 0 bytes") {
		t.Errorf("ReadMetadata with truncated memory = %v, want a size error", err)
	}
}

func TestReadMetadataNamesFirecrackerSnapshot(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "warmpool-snapshot.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadMetadata(dir)
	if err == nil || !strings.Contains(err.Error(), "firecracker snapshot") {
		t.Errorf("ReadMetadata of a firecracker snapshot = %v, want an error naming it", err)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := DefaultConfig("/var/lib/warmpool")
	if err := valid.Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	if err := (Config{StateDir: "/x"}).Validate(); err != nil {
		t.Errorf("zero config with a state dir: %v", err)
	}

	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"missing state dir", func(c *Config) { c.StateDir = "" }, "missing state_dir"},
		{"relative state dir", func(c *Config) { c.StateDir = "run" }, "absolute"},
		{"bad accel", func(c *Config) { c.Accel = "hvf" }, `invalid accel "hvf"`},
		{"kernel without initrd", func(c *Config) { c.Kernel = "/k" }, "set together"},
		{"negative timeout", func(c *Config) { c.StopTimeout = -time.Second }, "invalid stop_timeout"},
		{"heartbeat age too small", func(c *Config) { c.HeartbeatMaxAge = 50 * time.Millisecond }, "heartbeat_max_age"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigFromYAML(t *testing.T) {
	doc := `
binary: /usr/bin/qemu-system-x86_64
state_dir: /run/warmpool
accel: tcg
heartbeat_max_age: 1500ms
stop_timeout: 3s
detached: true
`
	var c Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if c.HeartbeatMaxAge != 1500*time.Millisecond {
		t.Errorf("heartbeat_max_age = %s, want 1.5s", c.HeartbeatMaxAge)
	}
	if c.StopTimeout != 3*time.Second {
		t.Errorf("stop_timeout = %s, want 3s", c.StopTimeout)
	}
	if !c.Detached {
		t.Errorf("detached = false, want true")
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if got := c.withDefaults().BootTimeout; got != DefaultConfig("").BootTimeout {
		t.Errorf("default boot_timeout = %s", got)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	if _, err := New(Config{StateDir: stateDir, Accel: "fast"}); err == nil {
		t.Fatalf("New with invalid accel returned nil")
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Errorf("New with an invalid config created %s", stateDir)
	}
}

func TestTailBufferKeepsEnd(t *testing.T) {
	var b tailBuffer
	b.Write([]byte(strings.Repeat("a", outputTailSize)))
	b.Write([]byte("end"))
	got := b.String()
	if len(got) != outputTailSize {
		t.Errorf("len = %d, want %d", len(got), outputTailSize)
	}
	if !strings.HasSuffix(got, "end") {
		t.Errorf("tail %q does not end with the last write", got[len(got)-10:])
	}
}

func TestVerifyProcessRejectsOtherPID(t *testing.T) {
	err := verifyProcess(os.Getpid(), "vm-1")
	if err == nil || !strings.Contains(err.Error(), "not a QEMU process") {
		t.Errorf("verifyProcess of the test binary = %v, want not-a-QEMU error", err)
	}
}

func TestShellQuote(t *testing.T) {
	if got, want := shellQuote("/a b/it's"), `'/a b/it'\''s'`; got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}

func TestCheckSnapshotRejectsUnusable(t *testing.T) {
	dir := t.TempDir()
	m := validMetadata()
	writeSnapshotFiles(t, dir, m)
	if err := writeMetadata(dir, m); err != nil {
		t.Fatal(err)
	}
	p := &Provider{}
	good := vm.Snapshot{ID: "s", Provider: ProviderName, Path: dir}
	if err := p.CheckSnapshot(m.Key, good); err != nil {
		t.Fatalf("CheckSnapshot of a good snapshot: %v", err)
	}

	wrongShape := m.Key
	wrongShape.MemoryMiB *= 2
	cases := []struct {
		name string
		key  vm.StackKey
		snap vm.Snapshot
		want string
	}{
		{"other provider", m.Key, vm.Snapshot{ID: "s", Provider: "firecracker", Path: dir}, `provider "firecracker"`},
		{"relative path", m.Key, vm.Snapshot{ID: "s", Path: "snap"}, "absolute"},
		{"missing dir", m.Key, vm.Snapshot{ID: "s", Path: filepath.Join(dir, "none")}, "no such file"},
		{"shape mismatch", wrongShape, good, "does not match the snapshot"},
		{"invalid key", vm.StackKey{Name: "../x", Version: "1", VCPUs: 1, MemoryMiB: 128}, good, "invalid name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := p.CheckSnapshot(tc.key, tc.snap)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CheckSnapshot = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
