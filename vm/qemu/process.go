package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/warmpool/warmpool/internal/pidfd"
)

// outputTailSize is how many bytes of QEMU's stderr and of the guest
// console are kept for error messages.
const outputTailSize = 4 << 10

// tailBuffer is an io.Writer that keeps only the last outputTailSize bytes
// written to it.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	t.buf = append(t.buf, p...)
	if excess := len(t.buf) - outputTailSize; excess > 0 {
		t.buf = append(t.buf[:0], t.buf[excess:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// process is one QEMU process, either started by this provider or found
// again by Reattach.
type process struct {
	pid int
	// exited is closed once the process has exited, and err then holds
	// how it ended.
	exited chan struct{}
	err    error

	// stderr and console hold the output tails of a process started
	// attached. A detached process writes them to files in logDir.
	stderr, console *tailBuffer
	logDir          string
}

// Names of the output files of a detached QEMU in its VM directory.
const (
	stderrFile  = "qemu.log"
	consoleFile = "console.log"
	pidFile     = "qemu.pid"
)

// startProcess starts QEMU in its own process group so that a terminal's
// Ctrl-C reaches only the warmpool process, which then destroys its VMs.
// An attached QEMU also gets SIGKILL when its parent dies. A detached one
// runs in its own session and logs to files in vmDir.
//
// NOTE: Linux sends the parent-death signal when the thread that started
// the child exits, not the process. The Go runtime ends threads only for
// goroutines that exit while locked to their thread, which this package
// never does.
func startProcess(binary string, args []string, workDir, vmDir string, files []*os.File, detached bool) (*process, error) {
	cmd := exec.Command(binary, args...)
	cmd.Dir = workDir
	cmd.ExtraFiles = files
	p := &process{exited: make(chan struct{})}

	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		stderr, err := os.Create(filepath.Join(vmDir, stderrFile))
		if err != nil {
			return nil, err
		}
		defer stderr.Close()
		console, err := os.Create(filepath.Join(vmDir, consoleFile))
		if err != nil {
			return nil, err
		}
		defer console.Close()
		cmd.Stdout, cmd.Stderr = console, stderr
		p.logDir = vmDir
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		p.stderr, p.console = &tailBuffer{}, &tailBuffer{}
		cmd.Stdout, cmd.Stderr = p.console, p.stderr
	}

	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	p.pid = cmd.Process.Pid

	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// watchProcess tracks a process that this process did not start, such as
// a detached QEMU left by an earlier warmpool run. It cannot reap it, so
// it waits on a pidfd for the exit.
func watchProcess(pid int, logDir string) (*process, error) {
	processExit, err := pidfd.Watch(pid)
	if err != nil {
		return nil, err
	}
	p := &process{pid: pid, exited: make(chan struct{}), logDir: logDir}
	go func() {
		<-processExit
		p.err = errors.New("process exited")
		close(p.exited)
	}()
	return p, nil
}

// alive reports whether the process has not exited yet.
func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the process group that the process leads and
// waits until the process has exited or timeout has passed. Killing the
// group also stops a QEMU that a wrapper script started without exec.
//
// NOTE: once the leader has exited, kill sends nothing, because its pid
// may since lead an unrelated group. A wrapper that exits while its QEMU
// child runs on leaves that child to the parent-death signal, which only
// an attached QEMU has.
func (p *process) kill(timeout time.Duration) error {
	if !p.alive() {
		return nil
	}
	// startProcess makes every QEMU the leader of its own group (Setpgid
	// or Setsid), so the group id is the pid.
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill qemu process group %d: %w", p.pid, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("qemu pid %d still running %s after SIGKILL", p.pid, timeout)
	}
}

// exitGrace is how long output waits for a failing QEMU to exit, so that
// its exit status and last stderr lines make it into the error.
const exitGrace = 500 * time.Millisecond

// output returns QEMU's exit status, when it has exited, and the tails of
// its stderr and of the guest console, for error messages. It waits up to
// exitGrace for the process to exit first.
func (p *process) output() string {
	select {
	case <-p.exited:
	case <-time.After(exitGrace):
	}

	var b strings.Builder
	if !p.alive() {
		status := "exit status 0"
		if p.err != nil {
			status = p.err.Error()
		}
		fmt.Fprintf(&b, "\nqemu pid %d exited: %s", p.pid, status)
	}

	var stderr, console string
	if p.logDir != "" {
		stderr = readTail(filepath.Join(p.logDir, stderrFile))
		console = readTail(filepath.Join(p.logDir, consoleFile))
	} else {
		stderr, console = p.stderr.String(), p.console.String()
	}
	if s := strings.TrimSpace(stderr); s != "" {
		fmt.Fprintf(&b, "\nqemu stderr:\n%s", s)
	}
	if s := strings.TrimSpace(console); s != "" {
		fmt.Fprintf(&b, "\nguest console:\n%s", s)
	}
	return b.String()
}

func readTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > outputTailSize {
		f.Seek(info.Size()-outputTailSize, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, outputTailSize))
	return string(b)
}

// verifyProcess checks that pid is the QEMU of VM id, by its command line,
// before anything signals it. A recorded pid may have been reused by an
// unrelated process since the record was written.
func verifyProcess(pid int, id string) error {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	if base := filepath.Base(args[0]); !strings.HasPrefix(base, "qemu-system-") && base != "qemu-kvm" {
		return fmt.Errorf("pid %d is %q, not a QEMU process", pid, args[0])
	}
	if !slices.Contains(args, "guest="+processName(id)) {
		return fmt.Errorf("pid %d is a QEMU process of another VM, not of %s", pid, id)
	}
	return nil
}

// findProcess returns the pid of the running QEMU of VM id, found by its
// command line in /proc, and false if there is none.
func findProcess(id string) (int, bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if verifyProcess(pid, id) == nil {
			return pid, true
		}
	}
	return 0, false
}

func readPIDFile(vmDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(vmDir, pidFile))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("invalid pid file %s: %q", filepath.Join(vmDir, pidFile), b)
	}
	return pid, nil
}
