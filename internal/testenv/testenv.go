// Package testenv decides what a test does when something it needs from
// the host, such as QEMU or Chromium, is missing.
package testenv

import (
	"os"
	"testing"
)

// RequireEnv is the environment variable that turns missing prerequisites
// into test failures. CI sets it, so that a machine without QEMU or Chromium
// fails the run instead of passing with the real-VM tests skipped.
const RequireEnv = "WARMPOOL_REQUIRE_ALL"

// Skipf skips the test with the formatted reason, or fails it when
// RequireEnv is set to 1.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but a prerequisite is missing: "+format, append([]any{RequireEnv}, args...)...)
	}
	t.Skipf(format, args...)
}
