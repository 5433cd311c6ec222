//go:build linux

// Command agent is the guest's /init. It mounts the kernel file systems,
// then speaks a line protocol on the agent serial port (ttyS1):
//
//	guest -> host  "ready"       once, when the agent starts
//	guest -> host  "hb SEQ"      every heartbeat interval
//	host -> guest  "ping TOKEN"  health probe
//	guest -> host  "pong TOKEN"  reply to a probe
//
// It uses only the standard library so it builds with a bare Go toolchain.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	agentPort         = "/dev/ttyS1"
	heartbeatInterval = 100 * time.Millisecond
)

func main() {
	logf("starting")
	mountAll()

	port, err := openRawPort(agentPort)
	if err != nil {
		logf("open %s: %v", agentPort, err)
		halt()
	}

	if strings.Contains(readFile("/proc/cmdline"), "warmpool.debug=1") {
		go runDebugShell()
	}

	var writeMu sync.Mutex
	send := func(line string) {
		writeMu.Lock()
		defer writeMu.Unlock()
		if _, err := port.WriteString(line + "\n"); err != nil {
			logf("write %s: %v", agentPort, err)
		}
	}

	send("ready")
	logf("ready")
	go sendHeartbeats(send)
	serveRequests(port, send)

	// The port never reaches EOF on a working system, so this is a fault.
	logf("agent port closed")
	halt()
}

func sendHeartbeats(send func(string)) {
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()

	for seq := uint64(1); ; seq++ {
		<-ticker.C
		send(fmt.Sprintf("hb %d", seq))
	}
}

// serveRequests replies to each "ping TOKEN" line until the port fails.
// Other lines are ignored because the host may connect in the middle of a
// line and send a partial one.
func serveRequests(port *os.File, send func(string)) {
	scanner := bufio.NewScanner(port)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		token, ok := strings.CutPrefix(line, "ping ")
		if ok {
			send("pong " + token)
		}
	}
	if err := scanner.Err(); err != nil {
		logf("read %s: %v", agentPort, err)
	}
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

// openRawPort opens a serial port and switches it to raw mode, so the tty
// layer neither echoes the host's requests back nor rewrites line endings.
func openRawPort(path string) (*os.File, error) {
	port, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}

	var t syscall.Termios
	if err := ioctl(port.Fd(), syscall.TCGETS, unsafe.Pointer(&t)); err != nil {
		port.Close()
		return nil, fmt.Errorf("get termios: %w", err)
	}

	t.Iflag &^= syscall.IGNBRK | syscall.BRKINT | syscall.PARMRK | syscall.ISTRIP |
		syscall.INLCR | syscall.IGNCR | syscall.ICRNL | syscall.IXON
	t.Oflag &^= syscall.OPOST
	t.Lflag &^= syscall.ECHO | syscall.ECHONL | syscall.ICANON | syscall.ISIG | syscall.IEXTEN
	t.Cflag &^= syscall.CSIZE | syscall.PARENB
	t.Cflag |= syscall.CS8 | syscall.CLOCAL
	t.Cc[syscall.VMIN] = 1
	t.Cc[syscall.VTIME] = 0

	if err := ioctl(port.Fd(), syscall.TCSETS, unsafe.Pointer(&t)); err != nil {
		port.Close()
		return nil, fmt.Errorf("set termios: %w", err)
	}
	return port, nil
}

func ioctl(fd uintptr, request uintptr, arg unsafe.Pointer) error {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, request, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
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

// halt powers the guest off so that QEMU exits instead of leaving a guest
// without an agent running. PID 1 must never return.
func halt() {
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		logf("power off: %v", err)
	}
	select {}
}
