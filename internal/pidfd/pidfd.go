// Package pidfd waits for the exit of a process that is not a child of
// this program, such as a VMM left running by an earlier run, through a
// Linux pidfd (Linux 5.3 or later).
package pidfd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Watch opens a pidfd for pid and returns a channel that is closed once
// the process exits. The goroutine that waits holds the pidfd until then,
// so a process that never exits keeps both. It returns an error if pid
// does not exist.
func Watch(pid int) (<-chan struct{}, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	exited := make(chan struct{})
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		close(exited)
	}()
	return exited, nil
}
