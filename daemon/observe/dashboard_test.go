package observe

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// dashboardPath is the Grafana dashboard, relative to this package.
var dashboardPath = filepath.Join("..", "..", "deploy", "grafana-dashboard.json")

// dashboard is the part of Grafana's dashboard model that the test reads.
type dashboard struct {
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	// Panels are the children of a collapsed row.
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatalf("read dashboard: %v", err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("parse %s: %v", dashboardPath, err)
	}
	return d
}

// flattenPanels returns every panel, including those inside collapsed rows.
func flattenPanels(panels []panel) []panel {
	var out []panel
	for _, p := range panels {
		out = append(out, p)
		out = append(out, flattenPanels(p.Panels)...)
	}
	return out
}

// metricName matches the metric names of this project in a PromQL
// expression. Label names and functions never start with "warmpool_".
var metricName = regexp.MustCompile(`\bwarmpool_[a-zA-Z0-9_:]*`)

// labelMatcher matches an equality label matcher with a literal value, such
// as result="failed", in a PromQL expression.
var labelMatcher = regexp.MustCompile(`\b([a-zA-Z_][a-zA-Z0-9_]*)="([^"$]*)"`)

// exposedLabelValues gathers reg and returns, for each label name, the set of
// values that some series has.
func exposedLabelValues(t *testing.T, reg prometheus.Gatherer) map[string]map[string]bool {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	values := make(map[string]map[string]bool)
	for _, family := range families {
		for _, metric := range family.GetMetric() {
			for _, pair := range metric.GetLabel() {
				if values[pair.GetName()] == nil {
					values[pair.GetName()] = make(map[string]bool)
				}
				values[pair.GetName()][pair.GetValue()] = true
			}
		}
	}
	return values
}

// exposedSeriesNames gathers reg and returns every series name a Prometheus
// scrape of it would store, including the _bucket, _sum and _count series of
// histograms and the _sum and _count series of summaries.
func exposedSeriesNames(t *testing.T, reg prometheus.Gatherer) map[string]bool {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	names := make(map[string]bool)
	for _, family := range families {
		name := family.GetName()
		switch family.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[name+"_bucket"] = true
			names[name+"_sum"] = true
			names[name+"_count"] = true
		case dto.MetricType_SUMMARY:
			names[name] = true
			names[name+"_sum"] = true
			names[name+"_count"] = true
		default:
			names[name] = true
		}
	}
	return names
}

// daemonRegistry returns a registry with the metrics the daemon registers,
// the Recorder's and pool.NewCollector's, each with at least one series.
func daemonRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	rec := New(reg, clockwork.NewFakeClock())

	p := newSimPool(t, rec, nil)
	if err := p.Register(pythonKey, vm.Snapshot{ID: "python-312", Provider: "sim", Path: "/snapshots/python"}); err != nil {
		t.Fatalf("register: %v", err)
	}
	reg.MustRegister(pool.NewCollector(p.Pool))

	// Give every Recorder series a sample, because a vector without children
	// gathers nothing.
	hooks := rec.PoolHooks()
	inst := vm.Instance{ID: "python-1", Stack: pythonKey}
	for _, outcome := range []string{OutcomeHit, OutcomeMiss, OutcomeCold, OutcomeError} {
		rec.ObserveAcquire(pythonKey, outcome, time.Millisecond)
	}
	hooks.Restored(inst, time.Millisecond)
	hooks.RestoreFailed("python-2", pythonKey, errors.New("restore failed"), time.Millisecond, time.Second)
	hooks.Evicted(inst, pool.EvictAge, nil)
	hooks.Destroyed(inst, time.Millisecond, errors.New("destroy failed"))
	return reg
}

func TestDashboardUsesRegisteredMetrics(t *testing.T) {
	d := loadDashboard(t)
	exposed := exposedSeriesNames(t, daemonRegistry(t))

	used := make(map[string][]string) // metric name -> panel titles
	exprs := 0
	for _, p := range flattenPanels(d.Panels) {
		for _, target := range p.Targets {
			exprs++
			for _, name := range metricName.FindAllString(target.Expr, -1) {
				used[name] = append(used[name], p.Title)
			}
		}
	}
	for _, v := range d.Templating.List {
		for _, name := range metricName.FindAllString(string(v.Query), -1) {
			used[name] = append(used[name], "variable "+v.Name)
		}
	}
	if exprs == 0 {
		t.Fatal("dashboard has no panel expressions")
	}

	var unknown []string
	for name, panels := range used {
		if !exposed[name] {
			unknown = append(unknown, name+" (in "+strings.Join(panels, ", ")+")")
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		var known []string
		for name := range exposed {
			known = append(known, name)
		}
		sort.Strings(known)
		t.Errorf("dashboard uses metrics the daemon does not register:\n  %s\nregistered: %s",
			strings.Join(unknown, "\n  "), strings.Join(known, " "))
	}

	for _, name := range []string{
		"warmpool_acquire_duration_seconds_bucket",
		"warmpool_restore_duration_seconds_bucket",
		"warmpool_evictions_total",
		"warmpool_restores_total",
	} {
		if _, ok := used[name]; !ok {
			t.Errorf("dashboard does not chart %s", name)
		}
	}
}

func TestDashboardLabelValuesExist(t *testing.T) {
	d := loadDashboard(t)
	exposed := exposedLabelValues(t, daemonRegistry(t))

	for _, p := range flattenPanels(d.Panels) {
		for _, target := range p.Targets {
			for _, match := range labelMatcher.FindAllStringSubmatch(target.Expr, -1) {
				name, value := match[1], match[2]
				if !exposed[name][value] {
					t.Errorf("panel %q matches %s=%q, but no registered series has that label value", p.Title, name, value)
				}
			}
		}
	}
}

func TestDashboardDatasourceIsVariable(t *testing.T) {
	d := loadDashboard(t)

	var datasourceVariable string
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && strings.Contains(string(v.Query), "prometheus") {
			datasourceVariable = v.Name
		}
	}
	if datasourceVariable == "" {
		t.Fatal("dashboard has no Prometheus datasource variable")
	}
	allowed := []string{"${" + datasourceVariable + "}", "$" + datasourceVariable}

	check := func(where string, ref *datasourceRef) {
		if ref == nil {
			return
		}
		if !slices.Contains(allowed, ref.UID) {
			t.Errorf("%s uses datasource uid %q, want %s", where, ref.UID, allowed[0])
		}
	}
	for _, p := range flattenPanels(d.Panels) {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil {
			t.Errorf("panel %q has no datasource", p.Title)
		}
		check("panel "+p.Title, p.Datasource)
		for _, target := range p.Targets {
			check("a target of panel "+p.Title, target.Datasource)
		}
	}
	for _, v := range d.Templating.List {
		check("variable "+v.Name, v.Datasource)
	}
}
