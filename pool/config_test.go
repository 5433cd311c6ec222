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
		{"min above max", func(c *Config) { c.MinDepth, c.MaxDepth = 5, 2 }, "invalid MinDepth 5: must not exceed MaxDepth 2; lower MinDepth or raise MaxDepth"},
		{"max below one", func(c *Config) { c.MinDepth, c.MaxDepth = 0, 0 }, "MaxDepth 0"},
		{"negative min", func(c *Config) { c.MinDepth = -1 }, "MinDepth -1"},
		{"zero concurrency", func(c *Config) { c.RestoreConcurrency = 0 }, "RestoreConcurrency 0"},
		{"zero refill interval", func(c *Config) { c.RefillInterval = 0 }, "RefillInterval"},
		{"negative max age", func(c *Config) { c.MaxAge = -time.Second }, "MaxAge"},
		{"zero restore timeout", func(c *Config) { c.RestoreTimeout = 0 }, "RestoreTimeout"},
		{"zero destroy timeout", func(c *Config) { c.DestroyTimeout = 0 }, "DestroyTimeout"},
		{"zero probe timeout", func(c *Config) { c.ProbeTimeout = 0 }, "ProbeTimeout"},
		{"negative probe interval", func(c *Config) { c.ProbeInterval = -1 }, "ProbeInterval"},
		{"zero join budget", func(c *Config) { c.JoinBudget = 0 }, "JoinBudget"},
		{"zero backoff initial", func(c *Config) { c.BackoffInitial = 0 }, "BackoffInitial"},
		{"huge concurrency", func(c *Config) { c.RestoreConcurrency = 1 << 40 }, "RestoreConcurrency 1099511627776: must be 1-1024"},
		{"max age below refill interval", func(c *Config) { c.MaxAge = time.Millisecond }, "MaxAge 1ms: must be at least RefillInterval 1s"},
		{"backoff initial above max", func(c *Config) { c.BackoffInitial = time.Hour }, "invalid BackoffInitial 1h0m0s: must not exceed BackoffMax 30s"},
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
