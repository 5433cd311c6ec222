// Package fcspec loads the Firecracker API description (Swagger 2.0) and
// validates HTTP requests against it with kin-openapi. The client's tests and
// the API emulator share it, so both judge a request by the same rules.
package fcspec

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// EnvVar names the environment variable that points at the description.
const EnvVar = "FIRECRACKER_API_SPEC"

// DefaultRelPath is the description's path relative to the repository
// root, used when EnvVar is unset.
const DefaultRelPath = "../shared/firecracker/firecracker-api.yaml"

// Spec is a loaded description with a router over its paths.
type Spec struct {
	Version string
	doc     *openapi3.T
	router  routers.Router
}

// Load reads a Swagger 2.0 description from path, converts it to OpenAPI 3
// and builds a router over it.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("firecracker api spec: %w", err)
	}
	return LoadData(data, path)
}

// LoadData is Load for a description already read; path names it in errors.
func LoadData(data []byte, path string) (*Spec, error) {
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		return nil, fmt.Errorf("firecracker api spec %s: parse: %w", path, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("firecracker api spec %s: convert to openapi 3: %w", path, err)
	}

	// The description names host "localhost", but requests arrive over a
	// unix socket with any Host header. Without servers the router matches
	// on paths only.
	doc3.Servers = nil
	if err := doc3.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("firecracker api spec %s: invalid: %w", path, err)
	}
	router, err := legacy.NewRouter(doc3)
	if err != nil {
		return nil, fmt.Errorf("firecracker api spec %s: router: %w", path, err)
	}
	return &Spec{Version: doc2.Info.Version, doc: doc3, router: router}, nil
}

// ValidateRequest checks method, path and body of req against the
// description. It reads req.Body, so callers that need the body afterwards
// pass a request whose GetBody is set or buffer the body first.
func (s *Spec) ValidateRequest(req *http.Request) error {
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	opts := &openapi3filter.Options{}
	// Name the field and the reason, without the schema dump that the
	// default message appends.
	opts.WithCustomSchemaErrorFunc(func(err *openapi3.SchemaError) string {
		return fmt.Sprintf("field /%s: %s", strings.Join(err.JSONPointer(), "/"), err.Reason)
	})
	input := &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options:    opts,
	}
	if err := openapi3filter.ValidateRequest(req.Context(), input); err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// HasSchemaProperty reports whether the named definition has the property,
// for features that only some releases of the description contain.
func (s *Spec) HasSchemaProperty(schema, property string) bool {
	ref, ok := s.doc.Components.Schemas[schema]
	if !ok || ref.Value == nil {
		return false
	}
	_, ok = ref.Value.Properties[property]
	return ok
}

// Locate returns the description's path from EnvVar, or else from
// DefaultRelPath resolved against the repository root found above dir (the
// directory holding go.mod). It returns "" when no file exists there.
func Locate(dir string) string {
	if p := os.Getenv(EnvVar); p != "" {
		return p
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			p := filepath.Join(d, DefaultRelPath)
			if _, err := os.Stat(p); err == nil {
				return p
			}
			return ""
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}
