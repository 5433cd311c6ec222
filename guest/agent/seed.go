//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// ioctl requests on /dev/random from linux/random.h. golang.org/x/sys/unix
// does not define them.
const (
	// rndAddEntropy is _IOW('R', 0x03, int[2]): mix a rand_pool_info's
	// bytes into the input pool and credit its entropy count.
	rndAddEntropy = 0x40085203
	// rndReseedCRNG is _IO('R', 0x07): rekey the CRNG from the input pool
	// now, so every later read reflects the new bytes.
	rndReseedCRNG = 0x5207
)

// randPoolInfo encodes struct rand_pool_info { int entropy_count;
// int buf_size; __u32 buf[]; } for seed, crediting 8 bits per byte
// because the host draws the seed from its own CSPRNG.
func randPoolInfo(seed []byte) []byte {
	words := (len(seed) + 3) / 4
	b := make([]byte, 8+4*words)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(b[4:], uint32(len(seed)))
	copy(b[8:], seed)
	return b
}

// reseedKernelRNG mixes seed into the kernel's input pool and forces the
// CRNG to reseed from it. Both ioctls need CAP_SYS_ADMIN, which the agent
// has as PID 1.
func reseedKernelRNG(seed []byte) error {
	dev, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer dev.Close()

	info := randPoolInfo(seed)
	if err := ioctl(dev.Fd(), rndAddEntropy, unsafe.Pointer(&info[0])); err != nil {
		return fmt.Errorf("reseed: RNDADDENTROPY: %w", err)
	}
	if err := ioctl(dev.Fd(), rndReseedCRNG, nil); err != nil {
		return fmt.Errorf("reseed: RNDRESEEDCRNG: %w", err)
	}
	return nil
}

// readKernelRandom returns vsockproto.RandomSize bytes from getrandom.
func readKernelRandom() ([]byte, error) {
	b := make([]byte, vsockproto.RandomSize)
	if _, err := unix.Getrandom(b, 0); err != nil {
		return nil, fmt.Errorf("getrandom: %w", err)
	}
	return b, nil
}

// rngHandlers are the SEED and RAND actions of both channels.
var rngHandlers = vsockproto.Handlers{Reseed: reseedKernelRNG, Random: readKernelRandom}
