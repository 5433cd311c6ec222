package firecracker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// netnsDir is the directory of the named network namespaces that
// "ip netns add" creates.
const netnsDir = "/run/netns"

// netnsName returns the network namespace of VM id in NetworkNamespace mode.
func netnsName(id string) string { return "warmpool-" + id }

// cloneTAPName returns the host TAP device of interface ifaceID of VM id in
// NetworkOverride mode: "wp" and 12 hex digits of a hash of both, because
// Linux limits interface names to 15 bytes and the id may have 64.
func cloneTAPName(id, ifaceID string) string {
	sum := sha256.Sum256([]byte(id + "/" + ifaceID))
	return "wp" + hex.EncodeToString(sum[:6])
}

func runIP(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %v: %w: %s", args, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// createNetns creates the named network namespace and returns its path.
func createNetns(ctx context.Context, name string) (string, error) {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err == nil {
		return "", fmt.Errorf("network namespace %s already exists: destroy the VM that uses it or delete it with \"ip netns delete %s\"", name, name)
	}
	if err := runIP(ctx, "netns", "add", name); err != nil {
		return "", err
	}
	return filepath.Join(netnsDir, name), nil
}

// deleteNetns deletes the named network namespace. A missing one is not an
// error.
func deleteNetns(ctx context.Context, name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return runIP(ctx, "netns", "delete", name)
}

// createTAP creates a persistent TAP device, which must not exist yet, owned by uid and gid when
// they are not negative, in namespace netns ("" for the current one), and
// sets it up.
func createTAP(ctx context.Context, netns, name string, uid, gid int) error {
	if runIP(ctx, nsArgs(netns, "link", "show", "dev", name)...) == nil {
		return fmt.Errorf("TAP device %s already exists: delete it, or turn create_taps off to use existing devices", name)
	}
	args := nsArgs(netns, "tuntap", "add", "dev", name, "mode", "tap")
	if uid >= 0 {
		args = append(args, "user", strconv.Itoa(uid), "group", strconv.Itoa(gid))
	}
	if err := runIP(ctx, args...); err != nil {
		return err
	}
	return runIP(ctx, nsArgs(netns, "link", "set", "dev", name, "up")...)
}

// deleteTAP deletes a TAP device. A missing one is not an error.
func deleteTAP(ctx context.Context, netns, name string) error {
	if netns != "" {
		if _, err := os.Stat(filepath.Join(netnsDir, netns)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	if err := runIP(ctx, nsArgs(netns, "link", "show", "dev", name)...); err != nil {
		return nil
	}
	return runIP(ctx, nsArgs(netns, "link", "delete", "dev", name)...)
}

func nsArgs(netns string, args ...string) []string {
	if netns == "" {
		return args
	}
	return append([]string{"-n", netns}, args...)
}
