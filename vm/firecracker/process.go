package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warmpool/warmpool/internal/pidfd"
	"github.com/warmpool/warmpool/vm/firecracker/api"
)

// ringBuffer keeps the last size bytes written to it.
type ringBuffer struct {
	mu   sync.Mutex // guards buf
	size int
	buf  []byte
}

func newRingBuffer(size int) *ringBuffer { return &ringBuffer{size: size} }

func (r *ringBuffer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, p...)
	if over := len(r.buf) - r.size; over > 0 {
		r.buf = append(r.buf[:0], r.buf[over:]...)
	}
	return len(p), nil
}

func (r *ringBuffer) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(bytes.TrimSpace(r.buf))
}

const outputTailSize = 4 << 10

// process is a running VMM process: a child of this program, or one found
// again by Reattach.
type process struct {
	pid     int
	exited  chan struct{} // closed when the process has exited and is reaped
	stderr  *ringBuffer
	console *ringBuffer
	outFile string // output file of a detached process, "" otherwise
	// initShell is set when pid is the init shell of a PID namespace
	// that contains the VMM, rather than the VMM itself.
	initShell bool

	mu      sync.Mutex // guards waitErr
	waitErr error
}

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// output returns the tail of the process's stderr and guest console for
// error messages.
func (p *process) output() string {
	var parts []string
	if p.outFile != "" {
		if tail := readTail(p.outFile, outputTailSize); tail != "" {
			parts = append(parts, "output: "+tail)
		}
	}
	if p.stderr != nil {
		if s := p.stderr.String(); s != "" {
			parts = append(parts, "stderr: "+s)
		}
	}
	if p.console != nil {
		if s := p.console.String(); s != "" {
			parts = append(parts, "console: "+s)
		}
	}
	return strings.Join(parts, "\n")
}

// exitError describes how the process ended, with its output.
func (p *process) exitError() error {
	p.mu.Lock()
	err := p.waitErr
	p.mu.Unlock()
	if err == nil {
		err = errors.New("exited")
	}
	if out := p.output(); out != "" {
		return fmt.Errorf("firecracker process %d: %w\n%s", p.pid, err, out)
	}
	return fmt.Errorf("firecracker process %d: %w", p.pid, err)
}

// exitWait is how long failure waits for a process that broke its
// connection to exit. The wait also lets cmd.Wait finish copying stderr.
const exitWait = time.Second

// failure adds to err, the error of a call to the process, how the
// process ended when it exits within exitWait, or its output so far. It
// waits only when the connection broke, not when the process responded or
// the call was canceled or timed out, so that Close and timeouts stay fast.
func (p *process) failure(err error) error {
	var transport *api.TransportError
	if !errors.As(err, &transport) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return p.withOutput(err)
	}
	select {
	case <-p.exited:
		return fmt.Errorf("%w: %w", err, p.exitError())
	case <-time.After(exitWait):
		return p.withOutput(err)
	}
}

// withOutput adds the process's output to err.
func (p *process) withOutput(err error) error {
	if out := p.output(); out != "" {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return err
}

func readTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > n {
		f.Seek(info.Size()-n, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	return string(bytes.TrimSpace(data))
}

// initShell runs the jailer as the init of a new PID namespace.
const initShell = "/bin/sh"

// spawnSpec says how to start one VMM process.
type spawnSpec struct {
	id    string
	dir   string // working directory: the VM directory
	netns string // path of a network namespace to start in, "" for the current one
}

// command builds the firecracker or jailer command line for spec.
func (c Config) command(spec spawnSpec) *exec.Cmd {
	if j := c.Jailer; j != nil {
		args := []string{
			"--id", spec.id,
			"--exec-file", c.FirecrackerBin,
			"--uid", strconv.Itoa(j.UID),
			"--gid", strconv.Itoa(j.GID),
			"--chroot-base-dir", j.ChrootBaseDir,
			"--cgroup-version", strconv.Itoa(j.CgroupVersion),
		}
		if spec.netns != "" {
			args = append(args, "--netns", spec.netns)
		}
		if j.ParentCgroup != "" {
			args = append(args, "--parent-cgroup", j.ParentCgroup)
		}
		for _, cg := range j.Cgroups {
			args = append(args, "--cgroup", cg)
		}
		args = append(args, "--", "--api-sock", "/"+apiSocketName)
		if c.Detached {
			cmd := exec.Command(j.Bin, args...)
			cmd.Dir = "/"
			return cmd
		}
		// The kernel clears the parent death signal when the jailer
		// changes its uid, so the jailer runs under a shell that keeps
		// it. spawn makes the shell the init of a new PID namespace, and
		// the kernel kills every process in a namespace when its init
		// dies. The shell forks for the jailer because "exit" follows.
		// Its working directory is the VM directory, so that
		// ownsProcess recognizes it.
		// NOTE: this needs /bin/sh on the host. A VMM that still
		// outlives the program, say after a kernel refused the PID
		// namespace, is killed by the next New on the same state_dir.
		shellArgs := append([]string{"-c", `"$@"; exit $?`, "warmpool-init", j.Bin}, args...)
		cmd := exec.Command(initShell, shellArgs...)
		cmd.Dir = spec.dir
		return cmd
	}
	// Relative to the working directory, so that socket paths stay short
	// however deep StateDir is.
	cmd := exec.Command(c.FirecrackerBin, "--api-sock", apiSocketName, "--id", spec.id)
	cmd.Dir = spec.dir
	return cmd
}

// spawn starts the VMM process for spec. Unless Detached, the process gets
// SIGKILL when this program exits (the parent death signal) and is reaped
// when it exits. With the jailer and without Detached, the process started
// is the init shell of a PID namespace that contains the jailed VMM.
func (c Config) spawn(spec spawnSpec) (*process, error) {
	cmd := c.command(spec)
	cmd.Env = append(os.Environ(), c.Env...)
	p := &process{exited: make(chan struct{})}

	if c.Detached {
		out, err := os.OpenFile(filepath.Join(spec.dir, outputName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open output file: %w", err)
		}
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
		p.outFile = out.Name()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		p.stderr, p.console = newRingBuffer(outputTailSize), newRingBuffer(outputTailSize)
		cmd.Stdout, cmd.Stderr = p.console, p.stderr
		// NOTE: Linux sends the parent death signal when the thread that
		// forked the child exits, not the process. Go keeps its threads
		// unless a goroutine exits while locked to one, which this package
		// never does after a successful namespace switch.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if c.Jailer != nil {
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
		}
	}

	var err error
	if spec.netns != "" && c.Jailer == nil {
		err = startInNetns(cmd, spec.netns)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p.pid = cmd.Process.Pid
	p.initShell = cmd.Path == initShell
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// vmmPID returns the pid of the VMM itself: the child of the init shell,
// or pid when there is no init shell or its child is not found.
func (p *process) vmmPID() int {
	if !p.initShell {
		return p.pid
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.pid, p.pid))
	if err != nil {
		return p.pid
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return p.pid
	}
	child, err := strconv.Atoi(fields[0])
	if err != nil {
		return p.pid
	}
	return child
}

// startInNetns starts cmd inside the network namespace at nsPath. The
// child inherits the namespace of the thread that forks it, so this thread
// enters the namespace for the fork and returns to its own afterwards. If
// it cannot return, the thread stays locked and Go discards it when the
// goroutine ends.
func startInNetns(cmd *exec.Cmd, nsPath string) error {
	target, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()

	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer self.Close()

	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: Go ends it with this goroutine.
		if startErr == nil {
			cmd.Process.Kill()
		}
		return fmt.Errorf("return from network namespace %s: %w", nsPath, err)
	}
	runtime.UnlockOSThread()
	return startErr
}

// waitForSocket waits until the API socket accepts connections, the process
// exits, or the timeout passes.
func waitForSocket(ctx context.Context, p *process, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for {
		conn, err := api.DialUnix(ctx, path)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("wait for API socket: %w", p.exitError())
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return p.withOutput(fmt.Errorf("wait for API socket %s: timed out after %v: %w", path, timeout, ctx.Err()))
			}
			return p.withOutput(fmt.Errorf("wait for API socket %s: %w", path, ctx.Err()))
		case <-ticker.C:
		}
	}
}

// watchPID returns a process for a VMM that is not a child of this program,
// with exited closed once it exits.
func watchPID(pid int, outFile string) (*process, error) {
	processExit, err := pidfd.Watch(pid)
	if err != nil {
		return nil, err
	}
	p := &process{pid: pid, exited: make(chan struct{}), outFile: outFile}
	go func() {
		<-processExit
		close(p.exited)
	}()
	return p, nil
}

// kill sends SIGKILL to the process group, or to the process when it has
// no group of its own.
func (p *process) kill() {
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// processMatches reports whether pid runs a command line that contains
// every one of want, so that a recycled pid is never taken for a VM.
func processMatches(pid int, want ...string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(data), "\x00")
	for _, w := range want {
		found := false
		for _, a := range args {
			if a == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
