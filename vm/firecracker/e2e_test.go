package firecracker

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// TestRealFirecracker runs template, pool fill, acquire, probe and destroy
// against a real Firecracker binary and KVM. The guest is the kernel at
// FIRECRACKER_KERNEL with the initramfs at FIRECRACKER_INITRD, the root
// file system image at FIRECRACKER_ROOTFS, or both.
func TestRealFirecracker(t *testing.T) {
	bin, kernel := os.Getenv("FIRECRACKER_BIN"), os.Getenv("FIRECRACKER_KERNEL")
	initrd, rootfs := os.Getenv("FIRECRACKER_INITRD"), os.Getenv("FIRECRACKER_ROOTFS")
	if bin == "" || kernel == "" || initrd == "" && rootfs == "" {
		t.Skip("set FIRECRACKER_BIN, FIRECRACKER_KERNEL and FIRECRACKER_INITRD or FIRECRACKER_ROOTFS " +
			"to run against a real Firecracker; the guest must start the warmpool guest agent (see README.md)")
	}
	kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("a real Firecracker needs /dev/kvm: %v", err)
	}
	kvm.Close()

	var drives []TemplateDrive
	if rootfs != "" {
		drives = append(drives, TemplateDrive{DriveID: "rootfs", Path: rootfs, Root: true})
	}
	p := newTestProvider(t, Config{FirecrackerBin: bin, StateDir: shortTempDir(t)})
	key := vm.StackKey{Name: "e2e", Version: "1", VCPUs: 1, MemoryMiB: 128}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	snap, err := p.Template(ctx, TemplateSpec{
		ID:          "e2e",
		SnapshotDir: shortTempDir(t),
		Stack:       key,
		KernelImage: kernel,
		InitrdPath:  initrd,
		BootArgs:    "console=ttyS0 reboot=k panic=1 pci=off",
		Drives:      drives,
	})
	if err != nil {
		t.Fatalf("template: %v", err)
	}

	var mu sync.Mutex
	var pids []int
	cfg := pool.DefaultConfig()
	cfg.MinDepth, cfg.MaxDepth = 2, 2
	cfg.RefillInterval = 50 * time.Millisecond
	cfg.Hooks.Restored = func(inst vm.Instance, took time.Duration) {
		t.Logf("restored %s in %v", inst.ID, took)
		mu.Lock()
		pids = append(pids, inst.PID)
		mu.Unlock()
	}
	pl, err := pool.New(p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pl.Register(key, snap); err != nil {
		t.Fatal(err)
	}
	h, err := pl.AcquireWait(ctx, key)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	probeCtx, probeCancel := context.WithTimeout(ctx, 2*time.Second)
	if err := p.Probe(probeCtx, h.Instance); err != nil {
		t.Errorf("probe: %v", err)
	}
	probeCancel()
	if err := p.Destroy(ctx, h.Instance); err != nil {
		t.Errorf("destroy: %v", err)
	}
	if err := pl.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil && isFirecracker(pid, bin) {
			t.Errorf("firecracker process %d left", pid)
		}
	}
	checkNothingLeft(t, p)
}

func isFirecracker(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == bin
}
