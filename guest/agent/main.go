//go:build linux

// Command agent is the guest's /init. It mounts the kernel file systems,
// then sends readiness and heartbeats to the host and replies to its health
// probes over one of two channels:
//
//   - vsock, for the Firecracker provider, when the kernel has a guest vsock
//     transport. The protocol is in package vsockproto.
//   - the serial port ttyS1 otherwise, for the QEMU provider. The protocol
//     is described in serial.go.
//
// The kernel command line can set these parameters:
//
//	warmpool.channel=serial|vsock  skip the detection and use this channel
//	warmpool.agent_port=N          vsock port for pings, default 10000
//	warmpool.heartbeat_port=N      host vsock port for heartbeats, default 10001
//	warmpool.debug=1               start a busybox shell on ttyS0
//
// It uses only the standard library, golang.org/x/sys/unix and package
// vsockproto, so that it stays small and builds statically.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// heartbeatInterval is the time between heartbeats on either channel. The
// QEMU provider's heartbeat limit and the Firecracker provider's
// heartbeat_timeout must be well above it.
const heartbeatInterval = 100 * time.Millisecond

func main() {
	logf("starting")
	mountAll()

	opts, err := parseCmdline(readFile("/proc/cmdline"))
	if err != nil {
		logf("%v", err)
		halt(false)
	}
	if opts.debug {
		go runDebugShell()
	}

	channel := opts.channel
	if channel == "" {
		channel = detectChannel()
	}

	switch channel {
	case channelVsock:
		err := runVsock(opts.agentPort, opts.heartbeatPort)
		logf("vsock channel: %v", err)
		halt(true)
	default:
		port, err := openRawPort(agentPort)
		if err != nil {
			logf("open %s: %v", agentPort, err)
			halt(false)
		}
		runSerial(port)
		// The port never reaches EOF on a working system, so this is a fault.
		logf("agent port closed")
		halt(false)
	}
}

// detectChannel picks vsock when the kernel has a guest vsock transport,
// and the serial port otherwise. Firecracker has no second serial port,
// and the QEMU provider attaches no vsock device.
func detectChannel() string {
	cid, err := localVsockCID()
	if err != nil {
		logf("using %s: no vsock: %v", agentPort, err)
		return channelSerial
	}
	logf("using vsock, local CID %d", cid)
	return channelVsock
}

func mountAll() {
	mounts := []struct{ source, target, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			logf("mkdir %s: %v", m.target, err)
			continue
		}
		if err := syscall.Mount(m.source, m.target, m.fstype, 0, ""); err != nil {
			logf("mount %s: %v", m.target, err)
		}
	}
}

// runDebugShell starts busybox's shell on the console when the kernel
// command line contains warmpool.debug=1.
func runDebugShell() {
	console, err := os.OpenFile("/dev/ttyS0", os.O_RDWR, 0)
	if err != nil {
		logf("debug shell: %v", err)
		return
	}
	defer console.Close()

	cmd := exec.Command("/bin/busybox", "sh")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = console, console, console
	cmd.Env = []string{"PATH=/bin", "HOME=/"}
	if err := cmd.Run(); err != nil {
		logf("debug shell: %v", err)
	}
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "warmpool-agent: "+format+"\n", args...)
}

// halt stops the guest so that the VMM exits instead of leaving a guest
// without an agent running. PID 1 must never return. QEMU exits on power
// off. Firecracker has no power-off device but exits when the guest
// resets the CPU, which a restart does with the boot argument reboot=k,
// so reset selects a restart.
func halt(reset bool) {
	syscall.Sync()
	cmd := syscall.LINUX_REBOOT_CMD_POWER_OFF
	if reset {
		cmd = syscall.LINUX_REBOOT_CMD_RESTART
	}
	if err := syscall.Reboot(cmd); err != nil {
		logf("reboot(%#x): %v", cmd, err)
	}
	select {}
}
