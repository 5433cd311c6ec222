package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker/api"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
)

func TestPrepareFailureCleansUp(t *testing.T) {
	cfg := testConfig(t)
	cfg.NetworkMode = NetworkNamespace
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "prepare", "")

	// A namespace of that name that the provider did not create.
	id := "prepare-0"
	if out, err := exec.Command("ip", "netns", "add", netnsName(id)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	_, err := p.Restore(context.Background(), id, testStack, snap)
	if err == nil {
		t.Fatal("restore succeeded although its network namespace already existed")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, netnsName(id))); err != nil {
		t.Errorf("the failed restore deleted a namespace it did not create: %v", err)
	}
	if got := p.SnapshotRefs(snap.Path); got != 0 {
		t.Errorf("snapshot refs after failed restore = %d, want 0", got)
	}
	checkNothingLeft(t, p)

	exec.Command("ip", "netns", "delete", netnsName(id)).Run()
	inst, err := p.Restore(context.Background(), id, testStack, snap)
	if err != nil {
		t.Fatalf("retry with the same id: %v", err)
	}
	destroyAll(t, p, []vm.Instance{inst})
	checkNothingLeft(t, p)
}

func TestTemplateOnExistingTAPFails(t *testing.T) {
	cfg := testConfig(t)
	cfg.CreateTAPs = true
	p := newTestProvider(t, cfg)
	tap := uniqueTAP(t)
	if out, err := exec.Command("ip", "tuntap", "add", "dev", tap, "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("create TAP: %v %s", err, out)
	}
	defer exec.Command("ip", "link", "delete", "dev", tap).Run()

	files := shortTempDir(t)
	kernel := filepath.Join(files, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	spec := TemplateSpec{ID: "tap", SnapshotDir: filepath.Join(files, "snaps"), Stack: testStack,
		KernelImage: kernel, Network: []api.NetworkInterface{netIface("eth0", tap)}}
	_, err := p.Template(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("template on an existing TAP with create_taps: err = %v, want already exists", err)
	}
	if !linkExists("", tap) {
		t.Errorf("the failed template deleted TAP %s, which it did not create", tap)
	}
	checkNothingLeft(t, p)
}

func TestRestoreHonorsAPITimeoutUnderDeadline(t *testing.T) {
	cfg := testConfig(t)
	cfg.APITimeout = 300 * time.Millisecond
	p := newTestProvider(t, cfg)
	snap := makeTemplate(t, p, "apitimeout", "")
	p.cfg.Env = append(p.cfg.Env, fcemu.EnvHangOn+"=PUT /snapshot/load")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	_, err := p.Restore(ctx, "apitimeout-0", testStack, snap)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("restore against a hung load: err = %v, want deadline exceeded", err)
	}
	if ctx.Err() != nil {
		t.Error("restore waited for the caller's 8s deadline instead of api_timeout 300ms")
	}
	checkNothingLeft(t, p)
}

func TestConcurrentTemplateOfOnePath(t *testing.T) {
	p := newTestProvider(t, testConfig(t, fcemu.EnvBootDelay+"=500ms"))
	files := shortTempDir(t)
	kernel := filepath.Join(files, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	spec := TemplateSpec{ID: "twice", SnapshotDir: filepath.Join(files, "snaps"), Stack: testStack, KernelImage: kernel}

	first := make(chan error, 1)
	go func() {
		_, err := p.Template(context.Background(), spec)
		first <- err
	}()
	// Wait until the first template has claimed its VM.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		entries, _ := os.ReadDir(filepath.Join(p.cfg.StateDir, "vms"))
		if len(entries) > 0 {
			break
		}
	}
	_, err := p.Template(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("second template of one path: err = %v, want in progress", err)
	}
	if err := <-first; err != nil {
		t.Errorf("first template failed: %v", err)
	}
	checkNothingLeft(t, p)
}

func TestDestroyDuringRestore(t *testing.T) {
	p := newTestProvider(t, testConfig(t, fcemu.EnvLatency+"=2ms"))
	snap := makeTemplate(t, p, "inflight", "")
	for i := range 10 {
		id := fmt.Sprintf("inflight-%d", i)
		restored := make(chan error, 1)
		go func() {
			_, err := p.Restore(context.Background(), id, testStack, snap)
			restored <- err
		}()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if _, err := os.Stat(p.cfg.recordDir(id)); err == nil {
				break
			}
		}
		// Later rounds destroy later in the restore.
		time.Sleep(time.Duration(i) * 3 * time.Millisecond)
		if err := p.Destroy(context.Background(), vm.Instance{ID: id}); err != nil {
			t.Errorf("%s: destroy during restore: %v", id, err)
		}
		<-restored
		if m := p.lookup(id); m != nil {
			t.Errorf("%s: VM survived a destroy that returned nil", id)
			p.Destroy(context.Background(), vm.Instance{ID: id})
		}
		checkNothingLeft(t, p)
	}
}
