package fcemu

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// openTAP attaches to the TAP device name in the current network namespace
// the way Firecracker does (TUNSETIFF with IFF_TAP, IFF_NO_PI and
// IFF_VNET_HDR). The kernel creates the device if it does not exist, and it
// fails with EBUSY while another process holds it.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

func dialUnix(path string) (net.Conn, error) { return net.Dial("unix", path) }
