package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestDemoShowsPoolAtWork(t *testing.T) {
	var out bytes.Buffer
	opts := demoOptions{depth: 3, acquires: 3, restoreLatency: 5 * time.Millisecond, seed: 1}
	if err := runDemo(context.Background(), opts, &out); err != nil {
		t.Fatalf("runDemo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"both stacks have 3 warm VMs",
		"acquired python-",
		"acquired node-",
		"miss (pool: no warm VM for stack",
		"evicted python-",
		"(unhealthy)",
		"warmpool_acquire_hits_total",
		"pool closed; 0 VMs still running in the provider",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}

func TestDemoRejectsBadOptions(t *testing.T) {
	cases := []struct {
		name string
		opts demoOptions
		want string
	}{
		{"zero depth", demoOptions{depth: 0, acquires: 1}, "--depth"},
		{"huge depth", demoOptions{depth: 65, acquires: 1}, "--depth"},
		{"zero acquires", demoOptions{depth: 1, acquires: 0}, "--acquires"},
		{"negative latency", demoOptions{depth: 1, acquires: 1, restoreLatency: -time.Second}, "--restore-latency"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
