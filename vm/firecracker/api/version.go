package api

import (
	"fmt"
	"regexp"
	"strconv"
)

// Version is a Firecracker release number.
type Version struct{ Major, Minor, Patch int }

// Releases that introduced fields the client can send.
var (
	// NetworkOverridesSince is the first release that accepts
	// network_overrides on PUT /snapshot/load.
	NetworkOverridesSince = Version{1, 12, 0}

	// VsockOverrideSince is the first release whose PUT /snapshot/load
	// accepts vsock_override. Release 1.15.1 rejects the field as unknown,
	// and the 1.16.1 API description has it.
	// NOTE: the field may have landed in 1.16.0; that release was not checked.
	VsockOverrideSince = Version{1, 16, 0}
)

var versionPattern = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)`)

// ParseVersion parses "1.12.0", "v1.12.0" or "1.12.0-dev" (the suffix is
// ignored).
func ParseVersion(s string) (Version, error) {
	m := versionPattern.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("invalid Firecracker version %q: expected MAJOR.MINOR.PATCH", s)
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	return v, nil
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// IsZero reports whether v is unset.
func (v Version) IsZero() bool { return v == Version{} }

// AtLeast reports whether v is o or later.
func (v Version) AtLeast(o Version) bool {
	if v.Major != o.Major {
		return v.Major > o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor > o.Minor
	}
	return v.Patch >= o.Patch
}

// CheckLoad returns an *UnsupportedError when s uses a field that release v
// does not accept.
func CheckLoad(v Version, s SnapshotLoad) error {
	if len(s.NetworkOverrides) > 0 && !v.AtLeast(NetworkOverridesSince) {
		return &UnsupportedError{Feature: "snapshot load network_overrides", Need: NetworkOverridesSince, Have: v}
	}
	if s.VsockOverride != nil && !v.AtLeast(VsockOverrideSince) {
		return &UnsupportedError{Feature: "snapshot load vsock_override", Need: VsockOverrideSince, Have: v}
	}
	return nil
}
