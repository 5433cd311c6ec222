package daemon

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/vm"
)

func bucketKeys(td *testDaemon) map[vm.StackKey][2]int {
	keys := make(map[vm.StackKey][2]int)
	for _, b := range td.Stats().Buckets {
		keys[b.Key] = [2]int{b.MinDepth, b.MaxDepth}
	}
	return keys
}

func TestReloadAppliesStackChanges(t *testing.T) {
	text := testConfig(t, t.TempDir())
	td := startTestDaemon(t, text, nil)
	ctx := context.Background()
	if _, err := td.client().Acquire(ctx, AcquireRequest{Stack: otherKey, WaitMS: 5000}); err != nil {
		t.Fatal(err)
	}

	// Drop node, add ruby, and give py its own depth.
	next := strings.Replace(text, `  - key: {name: node, version: "22", vcpus: 2, memory_mib: 512}
    snapshot: {path: sim://node}`, `  - key: {name: ruby, version: "3", vcpus: 1, memory_mib: 128}
    snapshot: {path: sim://ruby}`, 1)
	next = strings.Replace(next, "    snapshot: {path: sim://py}\n", "    snapshot: {path: sim://py}\n    min_depth: 1\n    max_depth: 1\n", 1)
	writeConfig(t, td.configPath, next)

	if err := td.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	keys := bucketKeys(td)
	if _, ok := keys[otherKey]; ok {
		t.Error("node is still registered after its removal")
	}
	if depth, ok := keys[unusedKey]; !ok || depth != [2]int{1, 1} {
		t.Errorf("ruby depth = %v (registered %v), want [1 1]", depth, ok)
	}
	if depth := keys[testKey]; depth != [2]int{1, 1} {
		t.Errorf("py depth = %v, want [1 1]", depth)
	}
	for _, id := range td.sim.Live() {
		if strings.HasPrefix(id, "node-") {
			rec, err := td.store.Get(id)
			if err != nil || rec.State != "handed_out" {
				t.Errorf("warm node VM %s still runs after unregister (record %+v, %v)", id, rec, err)
			}
		}
	}
	if _, err := td.client().Acquire(ctx, AcquireRequest{Stack: unusedKey, WaitMS: 5000}); err != nil {
		t.Errorf("acquire from the added stack: %v", err)
	}
	vms, err := td.client().VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms.VMs) != 2 {
		t.Errorf("handed-out VMs = %d, want 2: the node VM stays handed out", len(vms.VMs))
	}
}

func TestReloadRejectsBadConfig(t *testing.T) {
	text := testConfig(t, t.TempDir())
	td := startTestDaemon(t, text, nil)
	before := bucketKeys(td)

	writeConfig(t, td.configPath, strings.Replace(text, "max_depth: 3", "max_depth: 1", 1))
	err := td.Reload(context.Background())
	if err == nil {
		t.Fatal("Reload accepted max_depth below min_depth")
	}
	if !strings.Contains(err.Error(), "pool.max_depth: must be >= min_depth (2)") {
		t.Errorf("error = %v, want it to name pool.max_depth", err)
	}
	after := bucketKeys(td)
	if len(after) != len(before) {
		t.Fatalf("buckets changed from %v to %v", before, after)
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("bucket %s changed from %v to %v", k, v, after[k])
		}
	}
	if !strings.Contains(td.logs.String(), "reload rejected") {
		t.Error("rejected reload was not logged")
	}
	if td.config().Pool.MaxDepth != 3 {
		t.Errorf("running max_depth = %d, want 3", td.config().Pool.MaxDepth)
	}
}

func TestReloadRejectsMissingSnapshot(t *testing.T) {
	text := testConfig(t, t.TempDir())
	td := startTestDaemon(t, text, nil)
	before := bucketKeys(td)

	missing := filepath.Join(t.TempDir(), "missing")
	writeConfig(t, td.configPath, strings.Replace(text, "sim://node", missing, 1))
	err := td.Reload(context.Background())
	if err == nil {
		t.Fatal("Reload accepted a stack whose snapshot is missing")
	}
	if !strings.Contains(err.Error(), "stacks[1] (node@22/2cpu/512MiB): sim: snapshot: stat "+missing) {
		t.Errorf("error = %v, want it to name stacks[1] and the missing path", err)
	}
	if after := bucketKeys(td); !maps.Equal(after, before) {
		t.Errorf("buckets changed from %v to %v", before, after)
	}
	if got := td.config().Stacks[1].Snapshot.Path; got != "sim://node" {
		t.Errorf("running snapshot path = %q, want sim://node", got)
	}
}

func TestReloadRestoresStackDeletedOverAPI(t *testing.T) {
	td := startTestDaemon(t, testConfig(t, t.TempDir()), nil)
	before := bucketKeys(td)

	if status, body := td.do(t, "DELETE", "/v1/stacks/node/22/2/512", ""); status != 204 {
		t.Fatalf("DELETE node: status %d, body %s", status, body)
	}
	if _, ok := bucketKeys(td)[otherKey]; ok {
		t.Fatal("node is still registered after DELETE")
	}

	// The file is unchanged, and reload brings the pool back to it.
	if err := td.Reload(context.Background()); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if after := bucketKeys(td); !maps.Equal(after, before) {
		t.Errorf("buckets after reload = %v, want %v", after, before)
	}
	if !strings.Contains(td.logs.String(), `msg="config reloaded" added=1 removed=0 changed=0`) {
		t.Errorf("log does not count the stack that reload registered again")
	}
}

func TestReloadProviderChangeNeedsRestart(t *testing.T) {
	text := testConfig(t, t.TempDir())
	td := startTestDaemon(t, text, nil)

	next := strings.Replace(text, "provider: {kind: sim}", "provider:\n  kind: sim\n  sim: {restore_latency: 1s}", 1)
	writeConfig(t, td.configPath, next)
	if err := td.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	logs := td.logs.String()
	if !strings.Contains(logs, "need a restart") || !strings.Contains(logs, "sections=provider") {
		t.Errorf("log does not say the provider change needs a restart:\n%s", logs)
	}
	if got := td.config().Provider.Sim; got != nil && got.RestoreLatency != 0 {
		t.Errorf("running provider config changed to %+v", got)
	}
}

func TestDiffStacks(t *testing.T) {
	a := vm.StackKey{Name: "a", Version: "1", VCPUs: 1, MemoryMiB: 64}
	b := vm.StackKey{Name: "b", Version: "1", VCPUs: 1, MemoryMiB: 64}
	c := vm.StackKey{Name: "c", Version: "1", VCPUs: 1, MemoryMiB: 64}
	spec := stackSpec{snapshot: vm.Snapshot{Path: "p"}, minDepth: 1, maxDepth: 2}
	moved := spec
	moved.snapshot.Path = "q"

	deeper := spec
	deeper.maxDepth = 4
	movedDeeper := moved
	movedDeeper.maxDepth = 4

	tests := []struct {
		name                             string
		old, new                         map[vm.StackKey]stackSpec
		added, removed, changed, resized int
	}{
		{"no change", map[vm.StackKey]stackSpec{a: spec}, map[vm.StackKey]stackSpec{a: spec}, 0, 0, 0, 0},
		{"added", map[vm.StackKey]stackSpec{a: spec}, map[vm.StackKey]stackSpec{a: spec, b: spec}, 1, 0, 0, 0},
		{"removed", map[vm.StackKey]stackSpec{a: spec, b: spec}, map[vm.StackKey]stackSpec{b: spec}, 0, 1, 0, 0},
		{"snapshot changed", map[vm.StackKey]stackSpec{a: spec}, map[vm.StackKey]stackSpec{a: moved}, 0, 0, 1, 0},
		{"depth changed", map[vm.StackKey]stackSpec{a: spec}, map[vm.StackKey]stackSpec{a: deeper}, 0, 0, 0, 1},
		{"snapshot and depth", map[vm.StackKey]stackSpec{a: spec}, map[vm.StackKey]stackSpec{a: movedDeeper}, 0, 0, 1, 0},
		{"all kinds", map[vm.StackKey]stackSpec{a: spec, b: spec}, map[vm.StackKey]stackSpec{a: deeper, b: moved, c: spec}, 1, 0, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := diffStacks(tt.old, tt.new)
			if len(d.added) != tt.added {
				t.Errorf("added = %v, want %d", d.added, tt.added)
			}
			if len(d.removed) != tt.removed {
				t.Errorf("removed = %v, want %d", d.removed, tt.removed)
			}
			if len(d.changed) != tt.changed {
				t.Errorf("changed = %v, want %d", d.changed, tt.changed)
			}
			if len(d.resized) != tt.resized {
				t.Errorf("resized = %v, want %d", d.resized, tt.resized)
			}
		})
	}
}

func TestReloadDepthKeepsWarmVMs(t *testing.T) {
	text := testConfig(t, t.TempDir())
	td := startTestDaemon(t, text, nil)
	warmBefore := td.warmIDsOf(t, testKey, 2)

	next := strings.Replace(text, "    snapshot: {path: sim://py}\n", "    snapshot: {path: sim://py}\n    min_depth: 1\n    max_depth: 4\n", 1)
	writeConfig(t, td.configPath, next)
	if err := td.Reload(context.Background()); err != nil {
		t.Fatalf("Reload: %v", err)
	}

	if depth := bucketKeys(td)[testKey]; depth != [2]int{1, 4} {
		t.Errorf("py depth = %v, want [1 4]", depth)
	}
	live := td.sim.Live()
	for _, id := range warmBefore {
		if !slices.Contains(live, id) {
			t.Errorf("warm VM %s was destroyed by a reload that only changed the depth", id)
		}
	}
	if !strings.Contains(td.logs.String(), "resized=1") {
		t.Errorf("reload log does not count the resized stack:\n%s", td.logs.String())
	}
}

// warmIDsOf waits until at least n VMs of key are recorded as warm and
// returns their ids.
func (td *testDaemon) warmIDsOf(t *testing.T, key vm.StackKey, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		recs, err := td.store.ListState(state.Warm)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, rec := range recs {
			if rec.Stack == key {
				ids = append(ids, rec.ID)
			}
		}
		if len(ids) >= n {
			return ids
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d warm VMs of %s recorded within 5s", n, key)
	return nil
}
