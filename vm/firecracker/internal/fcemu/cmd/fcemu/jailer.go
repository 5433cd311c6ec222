package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/warmpool/warmpool/vm/firecracker/internal/fcemu"
	"github.com/warmpool/warmpool/vm/firecracker/internal/fcspec"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// runJailer does what the Firecracker jailer does that the provider depends
// on: it builds the chroot <chroot-base-dir>/<exec name>/<id>/root, copies
// the executable into it, creates /dev/net/tun there, enters --netns,
// chroots, drops to --uid and --gid, and execs the executable with the
// arguments after "--". It accepts the cgroup flags but applies none.
func runJailer(args []string) error {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	id := fs.String("id", "", "microVM id")
	execFile := fs.String("exec-file", "", "firecracker executable")
	uid := fs.Int("uid", -1, "user id")
	gid := fs.Int("gid", -1, "group id")
	base := fs.String("chroot-base-dir", "/srv/jailer", "chroot base directory")
	netns := fs.String("netns", "", "network namespace path")
	fs.Int("cgroup-version", 1, "cgroup version")
	fs.String("parent-cgroup", "", "parent cgroup")
	var cgroups, limits multiFlag
	fs.Var(&cgroups, "cgroup", "cgroup setting")
	fs.Var(&limits, "resource-limit", "resource limit")
	daemonize := fs.Bool("daemonize", false, "daemonize")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *id == "" || *execFile == "" || *uid < 0 || *gid < 0:
		return errors.New("jailer: --id, --exec-file, --uid and --gid are required")
	case *daemonize:
		return errors.New("jailer: --daemonize is not emulated")
	}

	name := filepath.Base(*execFile)
	root := filepath.Join(*base, name, *id, "root")
	if err := os.MkdirAll(filepath.Join(root, "dev", "net"), 0o755); err != nil {
		return err
	}
	if err := copyFile(*execFile, filepath.Join(root, name)); err != nil {
		return fmt.Errorf("jailer: copy %s: %w", *execFile, err)
	}
	tun := filepath.Join(root, "dev", "net", "tun")
	if err := unix.Mknod(tun, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("jailer: mknod %s: %w", tun, err)
	}
	if err := os.Chmod(tun, 0o666); err != nil {
		return err
	}
	if err := os.Chown(root, *uid, *gid); err != nil {
		return err
	}

	// The description stays outside the chroot: pass it as an open file.
	env := os.Environ()
	if path := specPath(); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFD, 0); err != nil {
			return err
		}
		env = append(env, fcemu.EnvSpecFD+"="+strconv.Itoa(int(f.Fd())))
	}

	// Namespace and credentials change the calling thread or the whole
	// process, and exec then replaces the process from this thread.
	runtime.LockOSThread()
	if *netns != "" {
		ns, err := os.Open(*netns)
		if err != nil {
			return fmt.Errorf("jailer: netns: %w", err)
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("jailer: setns %s: %w", *netns, err)
		}
	}
	if err := syscall.Chroot(root); err != nil {
		return fmt.Errorf("jailer: chroot %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setgid(*gid); err != nil {
		return err
	}
	if err := syscall.Setuid(*uid); err != nil {
		return err
	}
	argv := append([]string{name, "--id", *id}, fs.Args()...)
	return syscall.Exec("/"+name, argv, env)
}

func specPath() string {
	if p := os.Getenv(fcemu.EnvSpec); p != "" {
		return p
	}
	return os.Getenv(fcspec.EnvVar)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
