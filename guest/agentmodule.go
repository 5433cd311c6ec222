package guest

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The agent is built in a module of its own that takes warmpool's module
// path, so its imports of warmpool packages resolve to the copies beside
// it. Its only dependency is golang.org/x/sys, at the version and with the
// checksums that warmpool's go.mod and go.sum pin. A test checks that
// these lines match the repository's files.
const (
	agentGoMod = `module github.com/warmpool/warmpool

go 1.26.0

require golang.org/x/sys v0.50.0
`
	agentGoSum = `golang.org/x/sys v0.50.0 h1:dkKZEFTEKaLr1sjhs0WiKqoi8Jj5nHbS3Njmx1UoMJs=
golang.org/x/sys v0.50.0/go.mod h1:hNLxWAXmnKAxqDtdwIYC4bM9oQPEecfsnNMuSxOs3og=
`
)

// agentDir is the agent's main package, relative to the module root.
const agentDir = "guest/agent"

// sourceFile is one embedded agent source file.
type sourceFile struct {
	path string // relative to guest/, such as "agent/main.go"
	data []byte
}

// agentSources returns the embedded non-test Go files of the agent and the
// packages it imports, in lexical order of path.
func agentSources() ([]sourceFile, error) {
	var files []sourceFile
	err := fs.WalkDir(agentFiles, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, "_test.go") {
			return err
		}
		data, err := agentFiles.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, sourceFile{path: path, data: data})
		return nil
	})
	return files, err
}

// writeAgentModule writes the agent's module into dir.
func writeAgentModule(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(agentGoMod), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), []byte(agentGoSum), 0o644); err != nil {
		return err
	}
	sources, err := agentSources()
	if err != nil {
		return err
	}
	for _, src := range sources {
		path := filepath.Join(dir, "guest", filepath.FromSlash(src.path))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, src.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
