package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// firecrackerFlags configure the firecracker provider of the template and
// bench commands. Each path flag falls back to an environment variable.
type firecrackerFlags struct {
	bin         string
	kernel      string
	rootfs      string
	bootArgs    string
	tap         string
	createTAPs  bool
	networkMode string
	jailer      string
	jailerUID   int
	jailerGID   int
}

func (f *firecrackerFlags) addFlags(cmd *cobra.Command) {
	flags := cmd.Flags()
	flags.StringVar(&f.bin, "firecracker-bin", "", "firecracker executable, or the test emulator (default $FIRECRACKER_BIN)")
	flags.StringVar(&f.kernel, "firecracker-kernel", "", "uncompressed guest kernel for new firecracker templates (default $FIRECRACKER_KERNEL)")
	flags.StringVar(&f.rootfs, "firecracker-rootfs", "", "guest root file system image for new firecracker templates (default $FIRECRACKER_ROOTFS)")
	flags.StringVar(&f.bootArgs, "firecracker-boot-args", "console=ttyS0 reboot=k panic=1 pci=off", "guest kernel command line")
	flags.StringVar(&f.tap, "firecracker-tap", "", "host TAP device of the template's eth0; empty gives the guest no network")
	flags.BoolVar(&f.createTAPs, "firecracker-create-taps", true,
		"create the TAP devices of the template and clones and delete them afterwards; false uses existing devices, or lets Firecracker running as root create them")
	flags.StringVar(&f.networkMode, "firecracker-network", firecracker.NetworkOverride,
		"how clones get their own TAP device: override (network_overrides, Firecracker >= 1.12) or netns")
	flags.StringVar(&f.jailer, "firecracker-jailer", "", "jailer executable; empty runs firecracker without the jailer")
	flags.IntVar(&f.jailerUID, "firecracker-jailer-uid", 0, "user id the jailer drops to")
	flags.IntVar(&f.jailerGID, "firecracker-jailer-gid", 0, "group id the jailer drops to")
}

func flagOrEnv(value, env, flag string) (string, error) {
	if value == "" {
		value = os.Getenv(env)
	}
	if value == "" {
		return "", fmt.Errorf("missing %s: set the flag or %s", flag, env)
	}
	return filepath.Abs(value)
}

func newFirecrackerProvider(o providerOptions, logger *slog.Logger) (*providerSetup, error) {
	f := o.firecracker
	bin, err := flagOrEnv(f.bin, "FIRECRACKER_BIN", "--firecracker-bin")
	if err != nil {
		return nil, err
	}
	stateDir, removeStateDir, err := stateDirectory(o.stateDir)
	if err != nil {
		return nil, err
	}
	cfg := firecracker.Config{
		FirecrackerBin: bin,
		StateDir:       stateDir,
		NetworkMode:    f.networkMode,
		CreateTAPs:     f.tap != "" && f.createTAPs,
	}
	if f.jailer != "" {
		cfg.Jailer = &firecracker.JailerConfig{
			Bin: f.jailer, UID: f.jailerUID, GID: f.jailerGID, ChrootBaseDir: filepath.Join(stateDir, "jail"),
		}
	}
	p, err := firecracker.New(cfg)
	if err != nil {
		removeStateDir()
		return nil, err
	}

	return &providerSetup{
		provider: p,
		createSnapshot: func(ctx context.Context, key vm.StackKey, dir string) (vm.Snapshot, string, error) {
			spec, err := firecrackerTemplateSpec(f, key, dir)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			snap, err := p.Template(ctx, spec)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			logger.Info("created template", "dir", dir, "provider", firecracker.ProviderName)
			return snap, "", nil
		},
		loadSnapshot: func(dir string) (vm.Snapshot, string, error) {
			meta, err := firecracker.ReadMetadata(dir)
			if err != nil {
				return vm.Snapshot{}, "", err
			}
			return vm.Snapshot{ID: meta.ID, Provider: firecracker.ProviderName, Path: dir}, "", nil
		},
		memoryPSS: processPSS,
		cacheKey:  firecrackerCacheKey(bin, f),
		close:     removeStateDir,
	}, nil
}

func firecrackerTemplateSpec(f firecrackerFlags, key vm.StackKey, dir string) (firecracker.TemplateSpec, error) {
	kernel, err := flagOrEnv(f.kernel, "FIRECRACKER_KERNEL", "--firecracker-kernel")
	if err != nil {
		return firecracker.TemplateSpec{}, err
	}
	rootfs, err := flagOrEnv(f.rootfs, "FIRECRACKER_ROOTFS", "--firecracker-rootfs")
	if err != nil {
		return firecracker.TemplateSpec{}, err
	}
	spec := firecracker.TemplateSpec{
		ID:          filepath.Base(dir),
		SnapshotDir: filepath.Dir(dir),
		Stack:       key,
		KernelImage: kernel,
		BootArgs:    f.bootArgs,
		Drives:      []firecracker.TemplateDrive{{DriveID: "rootfs", Path: rootfs, Root: true}},
		Entropy:     true,
	}
	if f.tap != "" {
		spec.Network = []api.NetworkInterface{{IfaceID: "eth0", HostDevName: f.tap}}
	}
	return spec, nil
}

// firecrackerCacheKey identifies the binary, kernel and root file system
// by path, size and modification time, so bench reuses a cached template
// only for the same inputs.
func firecrackerCacheKey(bin string, f firecrackerFlags) string {
	h := sha256.New()
	for _, path := range []string{bin, f.kernel, os.Getenv("FIRECRACKER_KERNEL"), f.rootfs, os.Getenv("FIRECRACKER_ROOTFS"), f.tap} {
		fmt.Fprintln(h, path)
		if info, err := os.Stat(path); err == nil {
			fmt.Fprintln(h, info.Size(), info.ModTime().UnixNano())
		}
	}
	return "fc-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// processPSS returns the proportional set size in bytes of the VM's VMM
// process, from /proc/<pid>/smaps_rollup.
func processPSS(inst vm.Instance) (int64, error) {
	file, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", inst.PID))
	if err != nil {
		return 0, err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "Pss:" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse Pss of process %d: %w", inst.PID, err)
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("no Pss line in /proc/%d/smaps_rollup", inst.PID)
}
