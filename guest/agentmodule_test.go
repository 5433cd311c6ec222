package guest

import (
	"bytes"
	"debug/elf"
	"os"
	"strings"
	"testing"
)

// TestAgentModuleMatchesRepository checks that the agent's throwaway module
// requires golang.org/x/sys at the version warmpool's go.mod pins, with the
// checksums of warmpool's go.sum, and at a go version the repository meets.
func TestAgentModuleMatchesRepository(t *testing.T) {
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile("../go.sum")
	if err != nil {
		t.Fatal(err)
	}

	for _, line := range strings.Split(agentGoMod, "\n") {
		version, ok := strings.CutPrefix(line, "require ")
		if !ok {
			continue
		}
		if !bytes.Contains(gomod, []byte("\t"+version+"\n")) {
			t.Errorf("agent module requires %q, which ../go.mod does not pin", version)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(agentGoSum), "\n") {
		if !bytes.Contains(gosum, []byte(line+"\n")) {
			t.Errorf("agent go.sum line %q is not in ../go.sum", line)
		}
	}
}

func TestAgentSourcesExcludeTests(t *testing.T) {
	sources, err := agentSources()
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, src := range sources {
		if strings.HasSuffix(src.path, "_test.go") {
			t.Errorf("agent sources include the test file %s", src.path)
		}
		paths[src.path] = true
	}
	for _, want := range []string{"agent/main.go", "agent/vsock.go", "vsockproto/vsockproto.go"} {
		if !paths[want] {
			t.Errorf("agent sources lack %s", want)
		}
	}
}

// TestBuildAgentStatic builds the agent from its embedded source and checks
// that the result is a static linux/amd64 executable.
func TestBuildAgentStatic(t *testing.T) {
	bin, err := buildAgent(t.Context(), "go")
	if err != nil {
		t.Fatalf("build agent: %v", err)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("agent is not an ELF file: %v", err)
	}
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("agent machine = %v, want EM_X86_64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("agent has an ELF interpreter, so it is not static")
		}
	}
}
