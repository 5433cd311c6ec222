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

// ServePings replies to each "PING <token>" line read from conn with
// "PONG <token>" until conn fails or reaches EOF. It skips other lines,
// and returns nil at EOF.
func ServePings(conn io.ReadWriter) error {
	scanner := bufio.NewScanner(conn)
	scanner.Buffer(make([]byte, 0, 512), maxLine)
	for scanner.Scan() {
		token, ok := strings.CutPrefix(strings.TrimSpace(scanner.Text()), "PING ")
		if !ok {
			continue
		}
		if _, err := io.WriteString(conn, "PONG "+token+"\n"); err != nil {
			return fmt.Errorf("send pong: %w", err)
		}
	}
	return scanner.Err()
}

// WriteHeartbeat writes heartbeat number seq to w.
func WriteHeartbeat(w io.Writer, seq uint64) error {
	_, err := io.WriteString(w, "HEARTBEAT "+strconv.FormatUint(seq, 10)+"\n")
	return err
}
