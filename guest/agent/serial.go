//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// The serial protocol on the agent port, which the QEMU provider speaks:
//
//	guest -> host  "ready"       once, when the agent starts
//	guest -> host  "hb SEQ"      every heartbeat interval
//	host -> guest  "ping TOKEN"          health probe
//	guest -> host  "pong TOKEN"          reply to a probe
//	host -> guest  "seed TOKEN HEX"      host randomness for the kernel RNG
//	guest -> host  "seeded TOKEN"        the agent mixed it in and reseeded
//	host -> guest  "rand TOKEN"          request 16 bytes from getrandom
//	guest -> host  "rand TOKEN HEX"      the bytes
//	guest -> host  "error TOKEN MESSAGE" a seed or rand request failed
//
// The seed and rand arguments are the same as those of the vsock
// protocol's SEED and RAND, in package vsockproto.
const agentPort = "/dev/ttyS1"

// runSerial speaks the serial protocol on port until the port fails.
func runSerial(port *os.File) {
	var writeMu sync.Mutex
	send := func(line string) {
		writeMu.Lock()
		defer writeMu.Unlock()
		if _, err := port.WriteString(line + "\n"); err != nil {
			logf("write %s: %v", agentPort, err)
		}
	}

	send("ready")
	logf("ready on %s", agentPort)
	go sendSerialHeartbeats(send)
	serveSerialRequests(port, send, rngHandlers)
}

func sendSerialHeartbeats(send func(string)) {
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()

	for seq := uint64(1); ; seq++ {
		<-ticker.C
		send(fmt.Sprintf("hb %d", seq))
	}
}

// serveSerialRequests replies to each request line until the port fails.
// Other lines are ignored because the host may connect in the middle of a
// line and send a partial one.
func serveSerialRequests(port io.Reader, send func(string), h vsockproto.Handlers) {
	scanner := bufio.NewScanner(port)
	for scanner.Scan() {
		if reply, ok := serialReply(strings.TrimSpace(scanner.Text()), h); ok {
			send(reply)
		}
	}
	if err := scanner.Err(); err != nil {
		logf("read %s: %v", agentPort, err)
	}
}

// serialReply returns the reply to one request line, or false for a line
// that is no request. SEED and RAND are carried out by the vsock
// protocol's handlers, so both channels behave the same.
func serialReply(line string, h vsockproto.Handlers) (string, bool) {
	verb, rest, _ := strings.Cut(line, " ")
	token, arg, _ := strings.Cut(rest, " ")
	if token == "" {
		return "", false
	}
	var request string
	switch verb {
	case "ping":
		return "pong " + token, true
	case "seed":
		request = "SEED " + arg
	case "rand":
		request = "RAND"
	default:
		return "", false
	}

	reply, _ := h.Reply(request)
	if msg, failed := strings.CutPrefix(reply, "ERROR "); failed {
		return "error " + token + " " + msg, true
	}
	if verb == "seed" {
		return "seeded " + token, true
	}
	return "rand " + token + " " + strings.TrimPrefix(reply, "RAND "), true
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
