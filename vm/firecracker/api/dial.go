package api

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxSocketPath is the longest unix socket path Linux accepts: sun_path has
// 108 bytes including the terminating NUL.
const maxSocketPath = 107

// DialUnix connects to the unix socket at path. A path longer than the
// kernel's limit is reached through /proc/self/fd and a descriptor of its
// directory, so deep state directories work.
func DialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	short, release, err := ShortSocketPath(path)
	if err != nil {
		return nil, err
	}
	defer release()
	return d.DialContext(ctx, "unix", short)
}

// ShortSocketPath returns path, or when it is too long for a unix socket, an
// equal path through /proc/self/fd that is valid until release is called.
func ShortSocketPath(path string) (short string, release func(), err error) {
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open directory of socket %s: %w", path, err)
	}
	short = fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(short) > maxSocketPath {
		unix.Close(fd)
		return "", nil, fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return short, func() { unix.Close(fd) }, nil
}
