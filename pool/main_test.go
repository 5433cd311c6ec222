package pool

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them, which
// catches a refiller, worker or destroy that Close did not stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
