//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// localVsockCID returns the guest's vsock context id. It fails when the
// kernel has no guest-to-host vsock transport, such as the virtio-vsock
// driver with a device present, because the ioctl then returns
// VMADDR_CID_ANY.
func localVsockCID() (uint32, error) {
	dev, err := os.Open("/dev/vsock")
	if err != nil {
		return 0, err
	}
	defer dev.Close()

	cid, err := unix.IoctlGetUint32(int(dev.Fd()), unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
	if err != nil {
		return 0, fmt.Errorf("get local vsock CID: %w", err)
	}
	// CIDs 0-2 belong to the hypervisor, local loopback and the host.
	if cid == unix.VMADDR_CID_ANY || cid <= unix.VMADDR_CID_HOST {
		return 0, fmt.Errorf("no guest vsock transport (local CID %#x)", cid)
	}
	return cid, nil
}

// vsockListener accepts vsock connections on a non-blocking socket through
// the Go runtime's poller.
type vsockListener struct {
	file *os.File
}

// listenVsock listens on vsock port port for connections from the host.
func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	return &vsockListener{file: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port))}, nil
}

// accept waits for the next connection. It returns an error only when the
// listening socket fails.
func (l *vsockListener) accept() (streamConn, error) {
	raw, err := l.file.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var acceptErr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			nfd, _, acceptErr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			switch {
			case errors.Is(acceptErr, unix.EAGAIN):
				return false // The poller wakes this up when a connection arrives.
			case errors.Is(acceptErr, unix.EINTR), errors.Is(acceptErr, unix.ECONNABORTED):
				continue
			}
			return true
		}
	})
	if err == nil {
		err = acceptErr
	}
	if err != nil {
		return nil, fmt.Errorf("accept on %s: %w", l.file.Name(), err)
	}
	return os.NewFile(uintptr(nfd), "vsock-conn"), nil
}

// dialVsock connects to port on the vsock context cid. The connect call
// blocks until the peer accepts or rejects the connection, or the kernel's
// vsock connect timeout (2 seconds by default) passes. The returned
// connection is non-blocking, so write deadlines apply to it.
func dialVsock(cid, port uint32) (streamConn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := connectRetryingEINTR(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect to vsock %d:%d: %w", cid, port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect to vsock %d:%d: %w", cid, port, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port)), nil
}

// connectRetryingEINTR retries a blocking connect that a signal
// interrupted. The vsock socket is unconnected again after EINTR, so a
// second connect starts over.
func connectRetryingEINTR(fd int, addr unix.Sockaddr) error {
	for {
		err := unix.Connect(fd, addr)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
