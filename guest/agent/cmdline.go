//go:build linux

package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

// Channels the agent can speak on.
const (
	channelSerial = "serial"
	channelVsock  = "vsock"
)

// bootOptions are the agent's settings from the kernel command line.
type bootOptions struct {
	channel       string // "" to detect
	agentPort     uint32
	heartbeatPort uint32
	debug         bool
}

// parseCmdline reads the warmpool.* parameters of a kernel command line
// and ignores every other word. It rejects an unknown warmpool parameter or
// an invalid value, because a typo would otherwise leave the guest silent
// with no hint why.
func parseCmdline(cmdline string) (bootOptions, error) {
	opts := bootOptions{
		agentPort:     vsockproto.DefaultAgentPort,
		heartbeatPort: vsockproto.DefaultHeartbeatPort,
	}
	for _, word := range strings.Fields(cmdline) {
		name, value, _ := strings.Cut(word, "=")
		if !strings.HasPrefix(name, "warmpool.") {
			continue
		}
		var err error
		switch name {
		case "warmpool.channel":
			if value != channelSerial && value != channelVsock {
				err = fmt.Errorf("use %s or %s", channelSerial, channelVsock)
			}
			opts.channel = value
		case "warmpool.agent_port":
			opts.agentPort, err = parsePort(value)
		case "warmpool.heartbeat_port":
			opts.heartbeatPort, err = parsePort(value)
		case "warmpool.debug":
			if value != "0" && value != "1" {
				err = fmt.Errorf("use 0 or 1")
			}
			opts.debug = value == "1"
		default:
			err = fmt.Errorf("unknown parameter")
		}
		if err != nil {
			return bootOptions{}, fmt.Errorf("kernel command line: invalid %q: %w", word, err)
		}
	}
	if opts.agentPort == opts.heartbeatPort {
		return bootOptions{}, fmt.Errorf("kernel command line: agent and heartbeat port are both %d: use two ports", opts.agentPort)
	}
	return opts, nil
}

// parsePort parses a vsock port. 0xffffffff is VMADDR_PORT_ANY and
// cannot be listened on or dialed.
func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n == 0xffffffff {
		return 0, fmt.Errorf("use a port number from 1 to 4294967294")
	}
	return uint32(n), nil
}
