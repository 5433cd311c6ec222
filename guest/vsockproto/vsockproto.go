// Package vsockproto is the line protocol between the Firecracker provider
// (vm/firecracker) and the guest agent (guest/agent) over vsock. It holds
// the ports and messages of both sides in one place and works on any byte
// stream, so tests run it over net.Pipe or unix sockets.
//
// The protocol:
//
//	host -> VMM    "CONNECT <port>"  through Firecracker's vsock unix socket
//	VMM -> host    "OK <host port>"  once Firecracker has connected to the guest port
//	host -> guest  "PING <token>"    health probe
//	guest -> host  "PONG <token>"    reply to a probe
//	guest -> host  "HEARTBEAT <seq>" on the heartbeat connection, at a fixed interval
//	host -> guest  "SEED <hex>"      host randomness for the guest's kernel RNG
//	guest -> host  "SEEDED"          the guest mixed it in and reseeded
//	host -> guest  "RAND"            request 16 bytes from the guest's getrandom
//	guest -> host  "RAND <hex>"      the bytes, hex-encoded
//	guest -> host  "ERROR <message>" reply to SEED or RAND that failed
//
// Every clone of a snapshot starts with the same kernel RNG state, so the
// host sends SEED after each restore, with at least MinSeedSize bytes from
// its own crypto/rand, and counts the VM as ready only after SEEDED.
//
// The guest is ready once it replies to a ping: there is no separate ready
// message. The guest opens the heartbeat connection to the host, CID 2, on
// the heartbeat port, and Firecracker forwards it to the unix socket
// "<vsock socket>_<port>". The host takes any line on that connection as a
// heartbeat.
//
// The package uses only the standard library, because the guest agent
// imports it and must stay small.
package vsockproto

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Default vsock ports. The provider can be configured with others, and the
// guest agent then takes them from the kernel command line.
const (
	DefaultAgentPort     = 10000
	DefaultHeartbeatPort = 10001
)

// HostCID is the vsock context id of the host, as seen from the guest.
const HostCID = 2

// Bounds of the seed that SEED carries, in bytes. The minimum is the key
// size of the kernel's ChaCha20 CRNG.
const (
	MinSeedSize = 32
	MaxSeedSize = 512
)

// RandomSize is the number of bytes a RAND reply carries.
const RandomSize = 16

// maxLine bounds every line either side reads, so a peer that never sends
// a newline cannot make the other side buffer without limit.
const maxLine = 4096

// HostConn is the host side of a connection to the guest agent, after
// Firecracker has accepted the CONNECT request.
type HostConn struct {
	r *bufio.Reader
	w io.Writer
}

// Connect sends Firecracker a request, through conn to its vsock unix
// socket, to connect to guest port port, and reads its "OK" reply. Firecracker closes
// conn without a reply when nothing in the guest listens on port.
func Connect(conn io.ReadWriter, port uint32) (*HostConn, error) {
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return nil, fmt.Errorf("connect to guest port %d: %w", port, err)
	}
	c := &HostConn{r: bufio.NewReaderSize(conn, maxLine), w: conn}
	line, err := c.readLine()
	if err != nil {
		return nil, fmt.Errorf("connect to guest port %d: no reply from the vsock device: %w", port, err)
	}
	if !strings.HasPrefix(line, "OK ") {
		return nil, fmt.Errorf("connect to guest port %d: unexpected reply %q from the vsock device", port, line)
	}
	return c, nil
}

// Ping sends "PING token" and reads the agent's reply, which must be
// "PONG token". token must not contain a newline.
func (c *HostConn) Ping(token string) error {
	if token == "" || strings.ContainsAny(token, "\r\n") {
		return fmt.Errorf("invalid ping token %q: use a non-empty token without line breaks", token)
	}
	if _, err := fmt.Fprintf(c.w, "PING %s\n", token); err != nil {
		return fmt.Errorf("send ping: %w", err)
	}
	line, err := c.readLine()
	if err != nil {
		return fmt.Errorf("no reply from the guest agent: %w", err)
	}
	if want := "PONG " + token; line != want {
		return fmt.Errorf("unexpected reply %q from the guest agent, want %q", line, want)
	}
	return nil
}

// Seed sends "SEED <hex>" with seed, which must be MinSeedSize to
// MaxSeedSize bytes from a cryptographic source, and waits for "SEEDED".
func (c *HostConn) Seed(seed []byte) error {
	if err := checkSeedSize(len(seed)); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(c.w, "SEED %s\n", hex.EncodeToString(seed)); err != nil {
		return fmt.Errorf("send seed: %w", err)
	}
	line, err := c.readLine()
	if err != nil {
		return fmt.Errorf("no reply to seed from the guest agent: %w", err)
	}
	if line != "SEEDED" {
		return fmt.Errorf("guest agent did not reseed: reply %q", line)
	}
	return nil
}

// Random sends "RAND" and returns the RandomSize bytes of the reply.
func (c *HostConn) Random() ([]byte, error) {
	if _, err := io.WriteString(c.w, "RAND\n"); err != nil {
		return nil, fmt.Errorf("send rand: %w", err)
	}
	line, err := c.readLine()
	if err != nil {
		return nil, fmt.Errorf("no reply to rand from the guest agent: %w", err)
	}
	encoded, ok := strings.CutPrefix(line, "RAND ")
	if !ok {
		return nil, fmt.Errorf("unexpected reply %q to rand from the guest agent", line)
	}
	b, err := hex.DecodeString(encoded)
	if err != nil || len(b) != RandomSize {
		return nil, fmt.Errorf("invalid reply %q to rand: want %d hex-encoded bytes", line, RandomSize)
	}
	return b, nil
}

func checkSeedSize(n int) error {
	if n < MinSeedSize || n > MaxSeedSize {
		return fmt.Errorf("invalid seed of %d bytes: use %d to %d", n, MinSeedSize, MaxSeedSize)
	}
	return nil
}

// ParseSeed decodes the hex argument of a SEED line and checks its size.
func ParseSeed(encoded string) ([]byte, error) {
	seed, err := hex.DecodeString(encoded)
	if err != nil {
		return nil, errors.New("invalid seed: not hex")
	}
	if err := checkSeedSize(len(seed)); err != nil {
		return nil, err
	}
	return seed, nil
}

func (c *HostConn) readLine() (string, error) {
	line, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", fmt.Errorf("line longer than %d bytes", maxLine)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(line)), nil
}

// Handlers are the guest's actions behind SEED and RAND. A nil field
// makes the server reply "ERROR" to that request.
type Handlers struct {
	// Reseed mixes seed into the kernel RNG and forces a reseed.
	Reseed func(seed []byte) error
	// Random returns RandomSize bytes from the kernel RNG.
	Random func() ([]byte, error)
}

// ServePings serves conn with no SEED or RAND handlers.
func ServePings(conn io.ReadWriter) error {
	return Serve(conn, Handlers{})
}

// Serve replies to each PING, SEED and RAND line read from conn until conn
// fails or reaches EOF. It skips other lines, and returns nil at EOF.
func Serve(conn io.ReadWriter, h Handlers) error {
	scanner := bufio.NewScanner(conn)
	scanner.Buffer(make([]byte, 0, 512), maxLine)
	for scanner.Scan() {
		reply, ok := h.Reply(strings.TrimSpace(scanner.Text()))
		if !ok {
			continue
		}
		if _, err := io.WriteString(conn, reply+"\n"); err != nil {
			return fmt.Errorf("send reply: %w", err)
		}
	}
	return scanner.Err()
}

// Reply returns the reply to one request line, without its newline, or
// false for a line that is no request. The guest agent's serial channel
// uses it to carry out SEED and RAND the same way as Serve.
func (h Handlers) Reply(line string) (string, bool) {
	if token, ok := strings.CutPrefix(line, "PING "); ok {
		return "PONG " + token, true
	}
	if encoded, ok := strings.CutPrefix(line, "SEED "); ok {
		seed, err := ParseSeed(encoded)
		if err == nil && h.Reseed == nil {
			err = errors.New("reseed not supported")
		}
		if err == nil {
			err = h.Reseed(seed)
		}
		if err != nil {
			return "ERROR " + oneLine(err), true
		}
		return "SEEDED", true
	}
	if line == "RAND" {
		if h.Random == nil {
			return "ERROR rand not supported", true
		}
		b, err := h.Random()
		if err != nil {
			return "ERROR " + oneLine(err), true
		}
		return "RAND " + hex.EncodeToString(b), true
	}
	return "", false
}

func oneLine(err error) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(err.Error())
}

// WriteHeartbeat writes heartbeat number seq to w.
func WriteHeartbeat(w io.Writer, seq uint64) error {
	_, err := io.WriteString(w, "HEARTBEAT "+strconv.FormatUint(seq, 10)+"\n")
	return err
}
