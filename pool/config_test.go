package pool

import (
	"github.com/warmpool/warmpool/vm"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if cfg.JoinBudget != 200*time.Millisecond {
		t.Errorf("JoinBudget = %v, want 200ms", cfg.JoinBudget)
	}
}

func TestConfigValidateNamesField(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"min above max", func(c *Config) { c.MinDepth, c.MaxDepth = 5, 2 }, "min_depth 5 > max_depth 2"},
		{"max below one", func(c *Config) { c.MinDepth, c.MaxDepth = 0, 0 }, "max_depth 0"},
		{"negative min", func(c *Config) { c.MinDepth = -1 }, "min_depth -1"},
		{"zero concurrency", func(c *Config) { c.RestoreConcurrency = 0 }, "restore_concurrency 0"},
		{"zero refill interval", func(c *Config) { c.RefillInterval = 0 }, "refill_interval"},
		{"negative max age", func(c *Config) { c.MaxAge = -time.Second }, "max_age"},
		{"zero restore timeout", func(c *Config) { c.RestoreTimeout = 0 }, "restore_timeout"},
		{"zero destroy timeout", func(c *Config) { c.DestroyTimeout = 0 }, "destroy_timeout"},
		{"zero probe timeout", func(c *Config) { c.ProbeTimeout = 0 }, "probe_timeout"},
		{"negative probe interval", func(c *Config) { c.ProbeInterval = -1 }, "probe_interval"},
		{"zero join budget", func(c *Config) { c.JoinBudget = 0 }, "join_budget"},
		{"zero backoff initial", func(c *Config) { c.BackoffInitial = 0 }, "backoff_initial"},
		{"backoff initial above max", func(c *Config) { c.BackoffInitial = time.Hour }, "backoff_initial 1h0m0s > backoff_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.change(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("Validate() = nil, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestCombineHooksCallsEachInOrder(t *testing.T) {
	var calls []string
	first := Hooks{Evicted: func(_ vm.Instance, r EvictReason, _ error) { calls = append(calls, "first "+string(r)) }}
	second := Hooks{Evicted: func(_ vm.Instance, r EvictReason, _ error) { calls = append(calls, "second "+string(r)) }}
	h := CombineHooks(first, Hooks{}, second)
	h.Evicted(vm.Instance{}, EvictAge, nil)
	if strings.Join(calls, ",") != "first age,second age" {
		t.Errorf("calls = %v, want first then second", calls)
	}
	if h.Restored != nil {
		t.Error("Restored hook is set although no input set it")
	}
}
