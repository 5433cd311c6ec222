package qemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/warmpool/warmpool/vm"
)

// Chardev and object ids that the machine arguments refer to and that each
// VM defines with its own paths.
const (
	memoryBackendID = "mem"
	consoleID       = "console"
	agentID         = "agent"
)

// kernelCmdline puts the console on ttyS0, leaving ttyS1 to the agent, and
// turns a guest panic into a QEMU exit through panic=1 and -no-reboot.
const kernelCmdline = "console=ttyS0 quiet panic=1 tsc=reliable no_timer_check"

// machineArgs returns the QEMU arguments that define the guest hardware.
// A template records them and every clone runs with exactly the same ones,
// because incoming migration requires the same devices and RAM blocks.
// kernel and initrd are paths relative to the snapshot directory, which is
// QEMU's working directory.
//
// NOTE: QEMU reads the whole kernel image into anonymous memory for fw_cfg
// even in a clone, which never boots it, so each clone's PSS includes the
// kernel's size (about 14 MiB for Debian's 6.1 cloud kernel).
func machineArgs(key vm.StackKey, accel, kernel, initrd string) []string {
	cpu := "qemu64"
	if accel == AccelKVM {
		cpu = "host"
	}
	memory := strconv.Itoa(key.MemoryMiB) + "M"
	return []string{
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		"-machine", "pc,memory-backend=" + memoryBackendID,
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(key.VCPUs),
		"-m", memory,
		"-kernel", kernel,
		"-initrd", initrd,
		"-append", kernelCmdline,
		"-no-reboot",
		"-serial", "chardev:" + consoleID,
		"-serial", "chardev:" + agentID,
	}
}

// instanceSpec holds what differs between two QEMU processes running the
// same machine arguments.
type instanceSpec struct {
	ID        string
	MemoryMiB int
	// MemoryPath is the file backing guest RAM.
	MemoryPath string
	// SharedMemory maps MemoryPath shared (a template writes its RAM to
	// the file) instead of private copy-on-write (a clone).
	SharedMemory bool
	// Incoming makes QEMU wait for migrate-incoming instead of booting.
	Incoming bool
	// QMPFD and AgentFD are the inherited listening sockets for the QMP
	// monitor and the agent serial port.
	QMPFD, AgentFD int
}

// instanceArgs returns the per-VM arguments that complete machineArgs:
// the memory backend, the chardevs behind the serial ports and the QMP
// monitor. The VM always starts paused (-S) so that it runs only after an
// explicit cont.
func instanceArgs(s instanceSpec) []string {
	share := "off"
	if s.SharedMemory {
		share = "on"
	}
	args := []string{
		"-name", "guest=" + processName(s.ID),
		"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s",
			memoryBackendID, s.MemoryMiB, escapeOption(s.MemoryPath), share),
		"-chardev", "stdio,id=" + consoleID + ",signal=off",
		"-chardev", fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", agentID, s.AgentFD),
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", s.QMPFD),
		"-mon", "chardev=qmp,mode=control",
		"-S",
	}
	if s.Incoming {
		args = append(args, "-incoming", "defer")
	}
	return args
}

// processName is the QEMU guest name of VM id. Destroy and Reattach look
// for it in /proc/PID/cmdline before they signal a recorded pid.
func processName(id string) string {
	return "warmpool-" + id
}

// escapeOption doubles commas, which QEMU's option syntax reads as a
// literal comma inside a value.
func escapeOption(value string) string {
	return strings.ReplaceAll(value, ",", ",,")
}
