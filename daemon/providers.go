package daemon

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	"github.com/jonboulle/clockwork"

	"github.com/warmpool/warmpool/vm"
	"github.com/warmpool/warmpool/vm/firecracker"
	"github.com/warmpool/warmpool/vm/qemu"
	"github.com/warmpool/warmpool/vm/sim"
)

// ProviderConfig is the provider section. Kind selects the provider, and
// only the section of that kind may be set.
type ProviderConfig struct {
	// Kind is sim, qemu or firecracker.
	Kind        string              `yaml:"kind"`
	Sim         *sim.Config         `yaml:"sim"`
	QEMU        *qemu.Config        `yaml:"qemu"`
	Firecracker *firecracker.Config `yaml:"firecracker"`
}

var reflectConfigType = reflect.TypeFor[Config]()

// providerKinds lists the accepted values of provider.kind.
var providerKinds = []string{"sim", "qemu", "firecracker"}

// setDefaults fills the section of the selected kind. A qemu or firecracker
// provider without a state_dir keeps its VMs under the daemon's state_dir,
// in vms or fc.
func (p *ProviderConfig) setDefaults(stateDir string) {
	switch p.Kind {
	case "sim":
		if p.Sim == nil {
			p.Sim = &sim.Config{}
		}
	case "qemu":
		if p.QEMU == nil {
			defaults := qemu.DefaultConfig("")
			p.QEMU = &defaults
		}
		if p.QEMU.StateDir == "" && stateDir != "" {
			p.QEMU.StateDir = filepath.Join(stateDir, "vms")
		}
	case "firecracker":
		if p.Firecracker == nil {
			p.Firecracker = &firecracker.Config{}
		}
		if p.Firecracker.StateDir == "" && stateDir != "" {
			p.Firecracker.StateDir = filepath.Join(stateDir, "fc")
		}
		filled := p.Firecracker.WithDefaults()
		p.Firecracker = &filled
	}
}

func (p ProviderConfig) validate() []fieldError {
	var errs []fieldError
	add := func(path, msg string) { errs = append(errs, fieldError{path: path, msg: msg}) }

	sections := map[string]bool{"sim": p.Sim != nil, "qemu": p.QEMU != nil, "firecracker": p.Firecracker != nil}
	for name, set := range sections {
		if set && name != p.Kind {
			add("provider."+name, fmt.Sprintf("set, but provider.kind is %q: remove it or change kind", p.Kind))
		}
	}

	var section any
	switch p.Kind {
	case "sim":
		section = p.Sim
	case "qemu":
		section = p.QEMU
	case "firecracker":
		section = p.Firecracker
	default:
		add("provider.kind", fmt.Sprintf("invalid value %q: use one of %s", p.Kind, strings.Join(providerKinds, ", ")))
		return errs
	}
	validator, ok := section.(interface{ Validate() error })
	if !ok || reflect.ValueOf(section).IsNil() {
		return errs
	}
	if err := validator.Validate(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			add(sectionFieldPath("provider."+p.Kind, section, line), line)
		}
	}
	return errs
}

// checkDetached rejects detached: false in the qemu or firecracker section.
// The daemon always runs VMs detached, so that they survive a daemon crash
// and the next start can adopt them, and would otherwise ignore the field
// without a word. Positions are the field positions the YAML checker
// recorded, which show whether the field was written at all.
func (p ProviderConfig) checkDetached(positions map[string]position) []fieldError {
	sections := []struct {
		path     string
		detached bool
	}{
		{"provider.qemu.detached", p.QEMU != nil && p.QEMU.Detached},
		{"provider.firecracker.detached", p.Firecracker != nil && p.Firecracker.Detached},
	}
	var errs []fieldError
	for _, s := range sections {
		if _, set := positions[s.path]; set && !s.detached {
			errs = append(errs, fieldError{path: s.path,
				msg: "false is not supported: the daemon always runs VMs detached so they survive a restart; remove the field"})
		}
	}
	return errs
}

var wordPattern = regexp.MustCompile(`[a-z][a-z0-9_]*`)

// sectionFieldPath returns the path of the field a provider's validation
// message names, so that the error points at that field's line. The
// providers' messages name fields by their YAML key. If no key of the
// section appears in msg, the section's own path is returned.
func sectionFieldPath(path string, section any, msg string) string {
	fields := yamlFields(reflect.TypeOf(section).Elem())
	for _, word := range wordPattern.FindAllString(msg, -1) {
		if _, ok := fields[word]; ok {
			return path + "." + word
		}
	}
	return path
}

// build creates the selected provider. VMM providers run detached, so
// their VMs survive a daemon crash and can be adopted by the next start.
func (p ProviderConfig) build(log *slog.Logger, clock clockwork.Clock) (vm.Provider, error) {
	switch p.Kind {
	case "sim":
		cfg := *p.Sim
		cfg.Clock = clock
		provider, err := sim.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("create sim provider: %w", err)
		}
		return provider, nil
	case "qemu":
		cfg := *p.QEMU
		binary := cfg.Binary
		if binary == "" {
			binary = qemu.DefaultConfig("").Binary
		}
		if err := checkBinary("provider.qemu.binary", binary); err != nil {
			return nil, err
		}
		cfg.Detached = true
		cfg.Logger = log.With("provider", "qemu")
		provider, err := qemu.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("create qemu provider: %w", err)
		}
		return provider, nil
	case "firecracker":
		cfg := *p.Firecracker
		if err := checkBinary("provider.firecracker.firecracker_bin", cfg.FirecrackerBin); err != nil {
			return nil, err
		}
		cfg.Detached = true
		provider, err := firecracker.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("create firecracker provider: %w", err)
		}
		return provider, nil
	}
	return nil, fmt.Errorf("invalid provider.kind %q: use one of %s", p.Kind, strings.Join(providerKinds, ", "))
}
