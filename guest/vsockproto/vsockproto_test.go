package vsockproto

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeVMM plays Firecracker's vsock device on the far end of host: it
// reads the CONNECT line, sends reply, and then, when agent is not nil,
// hands the connection to it as if it were the guest's socket.
func fakeVMM(t *testing.T, host net.Conn, vmm net.Conn, reply string, agent func(io.ReadWriter) error) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		defer vmm.Close()
		// Read byte by byte so that nothing after the CONNECT line is
		// buffered here instead of reaching the agent.
		var line []byte
		b := make([]byte, 1)
		for {
			if _, err := vmm.Read(b); err != nil {
				done <- err
				return
			}
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		if string(line) != "CONNECT 10000" {
			done <- io.ErrUnexpectedEOF
			return
		}
		if reply == "" {
			done <- nil
			return
		}
		if _, err := io.WriteString(vmm, reply); err != nil {
			done <- err
			return
		}
		if agent != nil {
			done <- agent(vmm)
			return
		}
		done <- nil
	}()
	t.Cleanup(func() { host.Close() })
	return done
}

func TestPingServedByAgent(t *testing.T) {
	host, vmm := net.Pipe()
	done := fakeVMM(t, host, vmm, "OK 1073741824\n", ServePings)

	c, err := Connect(host, DefaultAgentPort)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	for _, token := range []string{"1", "2", "token-with-dashes"} {
		if err := c.Ping(token); err != nil {
			t.Errorf("ping %q: %v", token, err)
		}
	}
	host.Close()
	if err := <-done; err != nil {
		t.Errorf("agent: %v", err)
	}
}

func TestConnectWithoutListener(t *testing.T) {
	host, vmm := net.Pipe()
	fakeVMM(t, host, vmm, "", nil)

	_, err := Connect(host, DefaultAgentPort)
	if err == nil {
		t.Fatal("connect succeeded although the VMM closed the connection")
	}
	if !strings.Contains(err.Error(), "no reply from the vsock device") {
		t.Errorf("error %q does not say that the vsock device sent no reply", err)
	}
}

func TestConnectUnexpectedReply(t *testing.T) {
	host, vmm := net.Pipe()
	fakeVMM(t, host, vmm, "NOPE\n", nil)

	_, err := Connect(host, DefaultAgentPort)
	if err == nil {
		t.Fatal("connect succeeded on a reply other than OK")
	}
	if !strings.Contains(err.Error(), `"NOPE"`) {
		t.Errorf("error %q does not quote the reply", err)
	}
}

func TestPingWrongReply(t *testing.T) {
	host, vmm := net.Pipe()
	fakeVMM(t, host, vmm, "OK 1\n", func(rw io.ReadWriter) error {
		r := bufio.NewReader(rw)
		if _, err := r.ReadString('\n'); err != nil {
			return err
		}
		_, err := io.WriteString(rw, "PONG other\n")
		return err
	})

	c, err := Connect(host, DefaultAgentPort)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	err = c.Ping("mine")
	if err == nil {
		t.Fatal("ping accepted a pong with another token")
	}
	if !strings.Contains(err.Error(), `"PONG other"`) {
		t.Errorf("error %q does not quote the reply", err)
	}
}

func TestPingRejectsInvalidToken(t *testing.T) {
	var sent bytes.Buffer
	c := &HostConn{r: bufio.NewReader(strings.NewReader("")), w: &sent}
	for _, token := range []string{"", "a\nPING b", "a\r"} {
		if err := c.Ping(token); err == nil {
			t.Errorf("ping accepted token %q", token)
		}
	}
	if sent.Len() != 0 {
		t.Errorf("ping with an invalid token sent %q", sent.String())
	}
}

func TestPingLineTooLong(t *testing.T) {
	reply := "PONG " + strings.Repeat("x", 2*maxLine) + "\n"
	c := &HostConn{r: bufio.NewReaderSize(strings.NewReader(reply), maxLine), w: io.Discard}
	err := c.Ping("x")
	if err == nil {
		t.Fatal("ping accepted an overlong reply")
	}
	if !strings.Contains(err.Error(), "longer than") {
		t.Errorf("error %q does not name the line length", err)
	}
}

// readWriter joins a reader and a writer into an io.ReadWriter.
type readWriter struct {
	io.Reader
	io.Writer
}

func TestServePingsSkipsOtherLines(t *testing.T) {
	in := "garbage\nPING 7\nPONG 8\nPING\n  PING 9  \r\n"
	var out bytes.Buffer
	if err := ServePings(readWriter{strings.NewReader(in), &out}); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if got, want := out.String(), "PONG 7\nPONG 9\n"; got != want {
		t.Errorf("replies = %q, want %q", got, want)
	}
}

func TestServePingsLineTooLong(t *testing.T) {
	in := "PING " + strings.Repeat("x", 2*maxLine) + "\n"
	var out bytes.Buffer
	if err := ServePings(readWriter{strings.NewReader(in), &out}); err == nil {
		t.Error("serve accepted an overlong line")
	}
	if out.Len() != 0 {
		t.Errorf("serve replied %q to an overlong line", out.String())
	}
}

func TestServePingsWriteFails(t *testing.T) {
	agent, host := net.Pipe()
	host.Close()
	agent.SetDeadline(time.Now().Add(time.Second))
	err := ServePings(readWriter{strings.NewReader("PING 1\n"), agent})
	if err == nil {
		t.Fatal("serve returned nil although the reply could not be sent")
	}
}

func TestWriteHeartbeat(t *testing.T) {
	var out bytes.Buffer
	for seq := uint64(1); seq <= 2; seq++ {
		if err := WriteHeartbeat(&out, seq); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := out.String(), "HEARTBEAT 1\nHEARTBEAT 2\n"; got != want {
		t.Errorf("heartbeats = %q, want %q", got, want)
	}
}

func TestServeSeedAndRand(t *testing.T) {
	var gotSeed []byte
	h := Handlers{
		Reseed: func(seed []byte) error { gotSeed = seed; return nil },
		Random: func() ([]byte, error) { return bytes.Repeat([]byte{0xab}, RandomSize), nil },
	}
	seed := bytes.Repeat([]byte{1}, MinSeedSize)
	in := "SEED " + hex.EncodeToString(seed) + "\nRAND\nSEED 00\nSEED zz\n"
	var out bytes.Buffer
	if err := Serve(readWriter{strings.NewReader(in), &out}, h); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if !bytes.Equal(gotSeed, seed) {
		t.Errorf("reseed got %x, want %x", gotSeed, seed)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"SEEDED", "RAND " + strings.Repeat("ab", RandomSize), "ERROR invalid seed of 1 bytes", "ERROR invalid seed: not hex"}
	if len(lines) != len(want) {
		t.Fatalf("replies = %q, want %d lines", lines, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("reply %d = %q, want prefix %q", i, lines[i], want[i])
		}
	}
}

func TestServeWithoutHandlersReportsError(t *testing.T) {
	seed := strings.Repeat("01", MinSeedSize)
	var out bytes.Buffer
	if err := ServePings(readWriter{strings.NewReader("SEED " + seed + "\nRAND\n"), &out}); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if got, want := out.String(), "ERROR reseed not supported\nERROR rand not supported\n"; got != want {
		t.Errorf("replies = %q, want %q", got, want)
	}
}

func TestHostSeedAndRandom(t *testing.T) {
	var sent bytes.Buffer
	reply := "SEEDED\nRAND " + strings.Repeat("cd", RandomSize) + "\nERROR no\n"
	c := &HostConn{r: bufio.NewReader(strings.NewReader(reply)), w: &sent}
	seed := bytes.Repeat([]byte{7}, MinSeedSize)
	if err := c.Seed(seed); err != nil {
		t.Errorf("Seed: %v", err)
	}
	b, err := c.Random()
	if err != nil {
		t.Fatalf("Random: %v", err)
	}
	if !bytes.Equal(b, bytes.Repeat([]byte{0xcd}, RandomSize)) {
		t.Errorf("Random = %x", b)
	}
	if err := c.Seed(seed); err == nil || !strings.Contains(err.Error(), "ERROR no") {
		t.Errorf("Seed with an ERROR reply = %v, want an error quoting it", err)
	}
	if err := c.Seed(seed[:8]); err == nil {
		t.Error("Seed accepted 8 bytes")
	}
	if want := "SEED " + hex.EncodeToString(seed) + "\nRAND\nSEED " + hex.EncodeToString(seed) + "\n"; sent.String() != want {
		t.Errorf("sent %q, want %q", sent.String(), want)
	}
}
