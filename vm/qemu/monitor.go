package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// monitor runs QMP commands with a context. The qmp package's Run has no
// deadline, so a command whose context ends disconnects the monitor, which
// makes Run return, and the monitor is unusable afterwards.
type monitor struct {
	socket  *qmp.SocketMonitor
	version string
}

// dialMonitor connects to the QMP socket at path and completes the
// capabilities handshake.
//
// NOTE: when ctx ends during the handshake, dialMonitor returns but its
// goroutine stays blocked until QEMU closes the socket. Every caller kills
// or destroys the QEMU process after such a failure, which ends it.
func dialMonitor(ctx context.Context, path string) (*monitor, error) {
	socket, err := qmp.NewSocketMonitor("unix", path, time.Second)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}

	done := make(chan error, 1)
	go func() { done <- socket.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("qmp: handshake on %s: %w", path, err)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp: handshake on %s: %w", path, ctx.Err())
	}

	m := &monitor{socket: socket}
	if v := socket.Version; v != nil {
		m.version = fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
	}
	return m, nil
}

// run executes a QMP command and decodes its "return" value into result,
// unless result is nil.
func (m *monitor) run(ctx context.Context, command string, args any, result any) error {
	cmd := qmp.Command{Execute: command}
	if args != nil {
		cmd.Args = map[string]any{}
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		if err := json.Unmarshal(b, &cmd.Args); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
	}
	request, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	type reply struct {
		raw []byte
		err error
	}
	done := make(chan reply, 1)
	go func() {
		raw, err := m.socket.Run(request)
		done <- reply{raw, err}
	}()

	var r reply
	select {
	case r = <-done:
	case <-ctx.Done():
		m.socket.Disconnect()
		<-done
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if result == nil {
		return nil
	}

	var envelope struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(r.raw, &envelope); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", command, err)
	}
	if err := json.Unmarshal(envelope.Return, result); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", command, err)
	}
	return nil
}

func (m *monitor) close() {
	m.socket.Disconnect()
}

// setIgnoreShared enables the x-ignore-shared migration capability, which
// leaves RAM blocks backed by shared memory out of the migration stream.
// The template's RAM is such a block, so its state file holds only device
// state, and a clone maps the RAM from the template's memory file instead.
func (m *monitor) setIgnoreShared(ctx context.Context) error {
	args := map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}
	return m.run(ctx, "migrate-set-capabilities", args, nil)
}

// waitMigration polls query-migrate until the migration has completed. It
// returns an error if the migration fails or ctx ends first.
func (m *monitor) waitMigration(ctx context.Context) error {
	delay := time.Millisecond
	for {
		var status struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := m.run(ctx, "query-migrate", nil, &status); err != nil {
			return err
		}
		switch status.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", status.Status, status.ErrorDesc)
		}

		select {
		case <-ctx.Done():
			return fmt.Errorf("migration: %w (last status %q)", ctx.Err(), status.Status)
		case <-time.After(delay):
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}
