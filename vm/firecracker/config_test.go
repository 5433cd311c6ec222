package firecracker

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/warmpool/warmpool/vm/firecracker/api"
)

func TestConfigValidate(t *testing.T) {
	valid := Config{FirecrackerBin: "/usr/bin/firecracker", StateDir: "/var/lib/warmpool"}.WithDefaults()
	cases := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"missing binary", func(c *Config) { c.FirecrackerBin = "" }, "missing firecracker_bin"},
		{"relative state dir", func(c *Config) { c.StateDir = "state" }, "state_dir"},
		{"unknown network mode", func(c *Config) { c.NetworkMode = "bridge" }, "network_mode"},
		{"same ports", func(c *Config) { c.HeartbeatPort = c.AgentPort }, "agent_port"},
		{"negative grace", func(c *Config) { c.ShutdownGrace = -1 }, "shutdown_grace"},
		{"zero timeout", func(c *Config) { c.APITimeout = 0 }, "api_timeout"},
		{"jailer without base", func(c *Config) {
			c.Jailer = &JailerConfig{Bin: "/usr/bin/jailer", CgroupVersion: 2}
		}, "chroot_base_dir"},
		{"relative binary", func(c *Config) { c.FirecrackerBin = "bin/firecracker" }, "firecracker_bin"},
		{"relative jailer", func(c *Config) {
			c.Jailer = &JailerConfig{Bin: "jailer", ChrootBaseDir: "/srv/jailer", CgroupVersion: 2}
		}, "jailer.bin"},
		{"jailer cgroup version", func(c *Config) {
			c.Jailer = &JailerConfig{Bin: "/usr/bin/jailer", ChrootBaseDir: "/srv/jailer", CgroupVersion: 3}
		}, "cgroup_version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.modify(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

func TestConfigFromYAML(t *testing.T) {
	doc := `
firecracker_bin: /usr/bin/firecracker
state_dir: /var/lib/warmpool
network_mode: netns
heartbeat_timeout: 2s
detached: true
jailer:
  bin: /usr/bin/jailer
  uid: 123
  gid: 456
  chroot_base_dir: /srv/jailer
  cgroups: ["cpu.max=50000 100000"]
`
	var c Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.NetworkMode != NetworkNamespace || !c.Detached || c.HeartbeatTimeout.Seconds() != 2 {
		t.Errorf("decoded %+v", c)
	}
	if c.Jailer == nil || c.Jailer.UID != 123 || c.Jailer.CgroupVersion != 2 || len(c.Jailer.Cgroups) != 1 {
		t.Errorf("decoded jailer %+v", c.Jailer)
	}
}

func TestTemplateSpecValidate(t *testing.T) {
	valid := TemplateSpec{ID: "base", SnapshotDir: "/snaps", Stack: testStack, KernelImage: "/vmlinux"}
	cases := []struct {
		name   string
		modify func(*TemplateSpec)
		want   string
	}{
		{"valid", func(*TemplateSpec) {}, ""},
		{"mtu below 68", func(s *TemplateSpec) {
			s.Network = []api.NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0", MTU: 67}}
		}, "mtu"},
		{"mtu 68", func(s *TemplateSpec) {
			s.Network = []api.NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0", MTU: 68}}
		}, ""},
		{"vsock cid 2", func(s *TemplateSpec) { s.VsockCID = 2 }, "vsock_cid"},
		{"negative vsock cid", func(s *TemplateSpec) { s.VsockCID = -1 }, "vsock_cid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := valid
			tc.modify(&s)
			err := s.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
