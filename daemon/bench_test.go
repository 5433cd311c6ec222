package daemon

import (
	"context"
	"strings"
	"testing"
)

// BenchmarkAcquireDestroyOverSocket measures one acquire and one destroy
// of a handed-out VM through the API on a unix socket. The sim provider
// takes no time, so the figure is the daemon's own cost: HTTP, JSON, the
// pool, and two record-store commits, each with an fsync.
func BenchmarkAcquireDestroyOverSocket(b *testing.B) {
	text := strings.Replace(testConfig(b, b.TempDir()), "min_depth: 2\n  max_depth: 3",
		"min_depth: 32\n  max_depth: 64", 1)
	td := startTestDaemon(b, text, nil)
	client := td.client()
	ctx := context.Background()
	req := AcquireRequest{Stack: testKey, WaitMS: 5000}

	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Acquire(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if err := client.Destroy(ctx, resp.VM.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPoolsOverSocket measures GET /v1/pools, which reads only the
// pool's statistics.
func BenchmarkPoolsOverSocket(b *testing.B) {
	td := startTestDaemon(b, testConfig(b, b.TempDir()), nil)
	client := td.client()
	ctx := context.Background()
	for b.Loop() {
		if _, err := client.Pools(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquireDestroyParallel runs the same round trip from eight
// client goroutines at once. Record-store commits are serialized, so this
// shows how much they limit throughput.
func BenchmarkAcquireDestroyParallel(b *testing.B) {
	text := strings.Replace(testConfig(b, b.TempDir()), "min_depth: 2\n  max_depth: 3",
		"min_depth: 64\n  max_depth: 128", 1)
	td := startTestDaemon(b, text, nil)
	client := td.client()
	ctx := context.Background()
	req := AcquireRequest{Stack: testKey, WaitMS: 5000}

	b.SetParallelism(4) // 4 x GOMAXPROCS goroutines: 8 on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Acquire(ctx, req)
			if err != nil {
				b.Error(err)
				return
			}
			if err := client.Destroy(ctx, resp.VM.ID); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
