package guest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Debian packages the guest is built from.
const (
	KernelPackage  = "linux-image-cloud-amd64"
	BusyboxPackage = "busybox-static"
)

// FindKernel returns the path of the kernel image installed by Debian's
// linux-image-cloud-amd64. It follows the meta-package's dependency to the
// versioned image package and takes the vmlinuz from that package's file
// list (dpkg -L), so the choice does not depend on which other kernels sit
// in /boot. Without dpkg it falls back to the newest
// /boot/vmlinuz-*-cloud-amd64.
func FindKernel(ctx context.Context) (string, error) {
	path, dpkgErr := kernelFromDpkg(ctx)
	if dpkgErr == nil {
		return path, nil
	}

	matches, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
	if len(matches) == 0 {
		return "", fmt.Errorf("guest: kernel not found: %v, and no /boot/vmlinuz-*-cloud-amd64: "+
			"install %s or pass a kernel path", dpkgErr, KernelPackage)
	}
	// NOTE: lexical order picks the newest only while the version
	// numbers being compared have the same number of digits.
	sort.Strings(matches)
	return matches[len(matches)-1], nil
}

func kernelFromDpkg(ctx context.Context) (string, error) {
	depends, err := runOutput(ctx, "dpkg-query", "-W", "-f=${Depends}", KernelPackage)
	if err != nil {
		return "", err
	}
	// Depends looks like "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)".
	imagePackage, _, _ := strings.Cut(depends, " ")
	imagePackage = strings.TrimSuffix(imagePackage, ",")
	if !strings.HasPrefix(imagePackage, "linux-image-") {
		return "", fmt.Errorf("unexpected dependency %q of %s", depends, KernelPackage)
	}

	path, err := fileOfPackage(ctx, imagePackage, func(p string) bool {
		return strings.HasPrefix(p, "/boot/vmlinuz-")
	})
	if err != nil {
		return "", err
	}
	return path, nil
}

// FindBusybox returns the path of the static busybox installed by Debian's
// busybox-static, or /bin/busybox when dpkg does not list it.
func FindBusybox(ctx context.Context) (string, error) {
	path, err := fileOfPackage(ctx, BusyboxPackage, func(p string) bool {
		return p == "/bin/busybox" || p == "/usr/bin/busybox"
	})
	if err == nil {
		return path, nil
	}
	if _, statErr := os.Stat("/bin/busybox"); statErr == nil {
		return "/bin/busybox", nil
	}
	return "", fmt.Errorf("guest: busybox not found: %v: install %s or pass a busybox path",
		err, BusyboxPackage)
}

// fileOfPackage returns the first file listed by dpkg -L pkg that matches
// and exists.
func fileOfPackage(ctx context.Context, pkg string, match func(string) bool) (string, error) {
	list, err := runOutput(ctx, "dpkg", "-L", pkg)
	if err != nil {
		return "", err
	}
	for _, p := range strings.Split(list, "\n") {
		if !match(p) {
			continue
		}
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("no matching file in dpkg -L %s", pkg)
}
