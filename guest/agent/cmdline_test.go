//go:build linux

package main

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    bootOptions
		wantErr string
	}{
		{
			name:    "defaults",
			cmdline: "console=ttyS0 reboot=k panic=1 pci=off\n",
			want:    bootOptions{agentPort: 10000, heartbeatPort: 10001},
		},
		{
			name:    "all set",
			cmdline: "console=ttyS0 warmpool.channel=vsock warmpool.agent_port=5000 warmpool.heartbeat_port=5001 warmpool.debug=1",
			want:    bootOptions{channel: "vsock", agentPort: 5000, heartbeatPort: 5001, debug: true},
		},
		{
			name:    "serial forced",
			cmdline: "warmpool.channel=serial warmpool.debug=0",
			want:    bootOptions{channel: "serial", agentPort: 10000, heartbeatPort: 10001},
		},
		{name: "unknown channel", cmdline: "warmpool.channel=pci", wantErr: `"warmpool.channel=pci"`},
		{name: "port not a number", cmdline: "warmpool.agent_port=x", wantErr: `"warmpool.agent_port=x"`},
		{name: "port zero", cmdline: "warmpool.heartbeat_port=0", wantErr: "from 1 to"},
		{name: "port any", cmdline: "warmpool.agent_port=4294967295", wantErr: "from 1 to"},
		{name: "port too large", cmdline: "warmpool.agent_port=4294967296", wantErr: "from 1 to"},
		{name: "same ports", cmdline: "warmpool.agent_port=10001", wantErr: "both 10001"},
		{name: "unknown parameter", cmdline: "warmpool.chanel=vsock", wantErr: "unknown parameter"},
		{name: "debug not 0 or 1", cmdline: "warmpool.debug=yes", wantErr: "use 0 or 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCmdline(tt.cmdline)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parse %q = %+v, want an error", tt.cmdline, got)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse %q: %v", tt.cmdline, err)
			}
			if got != tt.want {
				t.Errorf("parse %q = %+v, want %+v", tt.cmdline, got, tt.want)
			}
		})
	}
}
