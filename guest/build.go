// Package guest builds the guest that warmpool's VMs boot: Debian's cloud
// kernel and an initramfs whose /init is a small static Go agent (see
// guest/agent) with busybox beside it for debugging. QEMU boots both. The
// same initramfs serves Firecracker, with an uncompressed kernel that the
// user supplies, because the agent detects which channel to speak on.
//
// The build reads only what Debian packages install (linux-image-cloud-amd64,
// busybox-static), the Go toolchain and the agent's one module dependency,
// golang.org/x/sys. It is cached: Build skips the work when the output
// directory already contains a guest built from the same inputs.
package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// agentFiles contains the agent's source and that of the protocol package it
// shares with the Firecracker provider, so that Build works from a binary
// without the repository at hand.
//
//go:embed agent/*.go vsockproto/*.go
var agentFiles embed.FS

// buildFormat changes whenever the layout of the initramfs changes, so that
// cached guests built by older code are rebuilt.
const buildFormat = "warmpool-guest-2"

// File names inside a guest directory.
const (
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	ManifestFile = "guest.json"
)

// Options are the inputs of Build. Empty fields are looked up on the host.
type Options struct {
	// OutDir receives vmlinuz, initrd.img and guest.json.
	OutDir string
	// Kernel is the path of a bzImage. Empty means the kernel of the
	// installed linux-image-cloud-amd64 package.
	Kernel string
	// Busybox is the path of a static busybox. Empty means the one of the
	// installed busybox-static package.
	Busybox string
	// GoBinary is the go command used to build the agent. Empty means "go".
	GoBinary string
}

// Guest describes a built guest.
type Guest struct {
	Kernel string `json:"-"`
	Initrd string `json:"-"`

	// Key is the hash of every input of the build.
	Key string `json:"key"`
	// KernelSource and BusyboxSource are the host files the guest was
	// built from.
	KernelSource  string `json:"kernel_source"`
	BusyboxSource string `json:"busybox_source"`
	GoVersion     string `json:"go_version"`
	// Cached is true when Build found the guest already built.
	Cached bool `json:"-"`
}

// Build builds the guest into opts.OutDir, or returns the guest already
// there when it was built from the same kernel, busybox and agent source.
// A cached guest is reused without running Go, so a newer Go toolchain
// does not rebuild it. Builds into one directory take turns through a
// lock file in it. Files are written under temporary names and renamed, so an
// interrupted build never leaves a manifest that matches partial files.
func Build(ctx context.Context, opts Options) (Guest, error) {
	if opts.OutDir == "" {
		return Guest{}, errors.New("guest build: missing output directory")
	}
	if opts.GoBinary == "" {
		opts.GoBinary = "go"
	}

	var err error
	if opts.Kernel == "" {
		opts.Kernel, err = FindKernel(ctx)
		if err != nil {
			return Guest{}, err
		}
	}
	if opts.Busybox == "" {
		opts.Busybox, err = FindBusybox(ctx)
		if err != nil {
			return Guest{}, err
		}
	}

	for _, path := range []string{opts.Kernel, opts.Busybox} {
		if _, err := os.Stat(path); err != nil {
			return Guest{}, fmt.Errorf("guest build: %w", err)
		}
	}

	// A guest built earlier counts when it matches the current kernel,
	// busybox and agent source under the Go version it was built with,
	// so a cached guest needs no Go toolchain.
	if cached, ok := loadCached(opts); ok {
		return cached, nil
	}

	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return Guest{}, fmt.Errorf("guest build: %w", err)
	}
	unlock, err := lockDir(opts.OutDir)
	if err != nil {
		return Guest{}, err
	}
	defer unlock()
	// Another process may have finished the same build while this one
	// waited for the lock.
	if cached, ok := loadCached(opts); ok {
		return cached, nil
	}

	if _, err := exec.LookPath(opts.GoBinary); err != nil {
		return Guest{}, fmt.Errorf("guest build: the guest agent must be built, which needs the Go toolchain: %w: "+
			"install Go or add it to PATH", err)
	}
	goVersion, err := runOutput(ctx, opts.GoBinary, "env", "GOVERSION")
	if err != nil {
		return Guest{}, fmt.Errorf("guest build: go version: %w", err)
	}
	key, err := buildKey(opts.Kernel, opts.Busybox, goVersion)
	if err != nil {
		return Guest{}, err
	}
	g := Guest{
		Kernel:        filepath.Join(opts.OutDir, KernelFile),
		Initrd:        filepath.Join(opts.OutDir, InitrdFile),
		Key:           key,
		KernelSource:  opts.Kernel,
		BusyboxSource: opts.Busybox,
		GoVersion:     goVersion,
	}

	// Remove the old manifest first so that a build stopped halfway is
	// never mistaken for a complete one.
	if err := os.Remove(filepath.Join(opts.OutDir, ManifestFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Guest{}, fmt.Errorf("guest build: %w", err)
	}

	initrd, err := buildInitramfs(ctx, opts)
	if err != nil {
		return Guest{}, err
	}
	kernel, err := os.ReadFile(opts.Kernel)
	if err != nil {
		return Guest{}, fmt.Errorf("guest build: read kernel: %w", err)
	}
	manifest, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return Guest{}, fmt.Errorf("guest build: %w", err)
	}

	if err := writeFileAtomic(g.Kernel, kernel, 0o644); err != nil {
		return Guest{}, err
	}
	if err := writeFileAtomic(g.Initrd, initrd, 0o644); err != nil {
		return Guest{}, err
	}
	if err := writeFileAtomic(filepath.Join(opts.OutDir, ManifestFile), append(manifest, '\n'), 0o644); err != nil {
		return Guest{}, err
	}
	return g, nil
}

// loadCached returns the guest in opts.OutDir when its key matches the
// current inputs under the Go version recorded in its manifest.
func loadCached(opts Options) (Guest, bool) {
	cached, err := Load(opts.OutDir)
	if err != nil {
		return Guest{}, false
	}
	key, err := buildKey(opts.Kernel, opts.Busybox, cached.GoVersion)
	if err != nil || key != cached.Key {
		return Guest{}, false
	}
	cached.Cached = true
	return cached, true
}

// lockDir takes an exclusive flock on a lock file in dir, waiting for
// other builds into dir to finish, and returns the function that releases
// it. The kernel releases the lock when the process dies.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".build.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guest build: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("guest build: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// Load returns the guest built in dir, or an error if dir holds no
// complete build.
func Load(dir string) (Guest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return Guest{}, fmt.Errorf("guest: %w", err)
	}
	var g Guest
	if err := json.Unmarshal(b, &g); err != nil {
		return Guest{}, fmt.Errorf("guest: invalid %s in %s: %w", ManifestFile, dir, err)
	}
	g.Kernel = filepath.Join(dir, KernelFile)
	g.Initrd = filepath.Join(dir, InitrdFile)
	for _, path := range []string{g.Kernel, g.Initrd} {
		if _, err := os.Stat(path); err != nil {
			return Guest{}, fmt.Errorf("guest: %w", err)
		}
	}
	return g, nil
}

// buildKey hashes every input of the build.
func buildKey(kernel, busybox, goVersion string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s%s", buildFormat, goVersion, agentGoMod, agentGoSum)
	sources, err := agentSources()
	if err != nil {
		return "", fmt.Errorf("guest build: %w", err)
	}
	for _, src := range sources {
		fmt.Fprintf(h, "%s %d\n", src.path, len(src.data))
		h.Write(src.data)
	}
	for _, path := range []string{kernel, busybox} {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("guest build: %w", err)
		}
		sum := sha256.Sum256(b)
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func buildInitramfs(ctx context.Context, opts Options) ([]byte, error) {
	agent, err := buildAgent(ctx, opts.GoBinary)
	if err != nil {
		return nil, err
	}
	busybox, err := os.ReadFile(opts.Busybox)
	if err != nil {
		return nil, fmt.Errorf("guest build: read busybox: %w", err)
	}

	entries := []cpioEntry{
		{Name: "bin", Mode: modeDir | 0o755},
		{Name: "bin/busybox", Mode: modeRegular | 0o755, Data: busybox},
		{Name: "bin/sh", Mode: modeSymlink | 0o777, Data: []byte("busybox")},
		// The kernel opens /dev/console for init's standard streams
		// before anything can mount devtmpfs, so the node must be in
		// the archive.
		{Name: "dev", Mode: modeDir | 0o755},
		{Name: "dev/console", Mode: modeCharDev | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "init", Mode: modeRegular | 0o755, Data: agent},
		{Name: "proc", Mode: modeDir | 0o755},
		{Name: "sys", Mode: modeDir | 0o755},
		{Name: "tmp", Mode: modeDir | 0o1777},
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })

	var buf bytes.Buffer
	if err := writeCPIO(&buf, entries); err != nil {
		return nil, fmt.Errorf("guest build: %w", err)
	}
	return buf.Bytes(), nil
}

// buildAgent compiles the embedded agent source as a static linux/amd64
// binary in a throwaway copy of the module that holds only the agent's
// packages. The flags drop paths, symbols and the build id, so the same
// source and toolchain give the same bytes. golang.org/x/sys comes from
// the module cache, or else through GOPROXY.
func buildAgent(ctx context.Context, goBinary string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "warmpool-agent-")
	if err != nil {
		return nil, fmt.Errorf("guest build: %w", err)
	}
	defer os.RemoveAll(dir)

	if err := writeAgentModule(dir); err != nil {
		return nil, fmt.Errorf("guest build: %w", err)
	}

	out := filepath.Join(dir, "agent.bin")
	cmd := exec.CommandContext(ctx, goBinary, "build", "-trimpath",
		"-ldflags=-s -w -buildid=", "-o", out, "./"+agentDir)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64",
		"GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local", "GOWORK=off")
	if output, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("guest build: go build agent: %w\n%s", err, output)
	}
	return os.ReadFile(out)
}

// writeFileAtomic writes data to a new temporary file beside path and
// renames it to path, so readers see the old or the new file, and
// concurrent writers never share a temporary name.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("guest build: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("guest build: %w", err)
	}
	return nil
}

func runOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && len(exitErr.Stderr) > 0 {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err,
				strings.TrimSpace(string(exitErr.Stderr)))
		}
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
