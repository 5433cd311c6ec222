package daemon

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// position is a line and column in a YAML file, both counted from 1.
type position struct{ line, column int }

func (p position) String() string { return fmt.Sprintf("%d:%d", p.line, p.column) }

// fieldError is a problem with one field of a config file. Path is the
// field's path in the file, such as "stacks[1].max_depth".
type fieldError struct {
	path string
	pos  position // zero when the field has no node in the file
	msg  string
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	durationType    = reflect.TypeFor[time.Duration]()
)

// yamlChecker walks a YAML node tree alongside the Go type it will be decoded
// into. It reports unknown fields and values of the wrong type with their
// line and column, where yaml.v3's strict decoder gives only the line. It
// also records the position of every field it visits, so that later
// validation errors can point at the line and column too.
type yamlChecker struct {
	positions map[string]position
	errs      []fieldError
}

func newYAMLChecker() *yamlChecker {
	return &yamlChecker{positions: make(map[string]position)}
}

func nodePosition(n *yaml.Node) position { return position{n.Line, n.Column} }

func (c *yamlChecker) fail(n *yaml.Node, path, format string, args ...any) {
	c.errs = append(c.errs, fieldError{path: path, pos: nodePosition(n), msg: fmt.Sprintf(format, args...)})
}

// check reports the problems of node n as a value of type t at path.
func (c *yamlChecker) check(n *yaml.Node, t reflect.Type, path string) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if path != "" {
		c.positions[path] = nodePosition(n)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) || t == durationType {
		c.checkLeaf(n, t, path)
		return
	}

	switch t.Kind() {
	case reflect.Struct:
		c.checkStruct(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.fail(n, path, "expected a list, got %s", describeNode(n))
			return
		}
		for i, item := range n.Content {
			c.check(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.fail(n, path, "expected a mapping, got %s", describeNode(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			c.check(n.Content[i+1], t.Elem(), joinPath(path, n.Content[i].Value))
		}
	case reflect.Interface, reflect.Func, reflect.Chan:
		c.fail(n, path, "cannot be set in a config file")
	default:
		c.checkLeaf(n, t, path)
	}
}

// checkLeaf decodes n into a scratch value of type t, so a wrong type or an
// invalid value is reported with its position.
func (c *yamlChecker) checkLeaf(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode && !reflect.PointerTo(t).Implements(unmarshalerType) {
		c.fail(n, path, "expected %s, got %s", describeType(t), describeNode(n))
		return
	}
	// yaml.v3 truncates a float such as 1.5 into an integer field
	// without an error, so floats are rejected here.
	if isInteger(t) && !reflect.PointerTo(t).Implements(unmarshalerType) && n.ShortTag() == "!!float" {
		c.fail(n, path, "invalid value %q: expected %s", n.Value, describeType(t))
		return
	}
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return
	}
	var typeErr *yaml.TypeError
	if errors.As(err, &typeErr) {
		c.fail(n, path, "invalid value %q: expected %s", n.Value, describeType(t))
		return
	}
	c.fail(n, path, "%v", err)
}

func isInteger(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return t != durationType
	}
	return false
}

func (c *yamlChecker) checkStruct(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		c.fail(n, path, "expected a mapping, got %s", describeNode(n))
		return
	}
	fields := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		fieldPath := joinPath(path, key.Value)
		field, ok := fields[key.Value]
		if !ok {
			c.fail(key, fieldPath, "unknown field (known fields: %s)", strings.Join(sortedKeys(fields), ", "))
			continue
		}
		c.check(value, field.Type, fieldPath)
	}
}

// yamlFields returns the struct fields of t by their YAML name, following
// yaml.v3's rules: the lowercased field name unless a tag names it, "-"
// skips the field, and ",inline" merges an embedded struct's fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	fields := make(map[string]reflect.StructField)
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			inner := f.Type
			if inner.Kind() == reflect.Pointer {
				inner = inner.Elem()
			}
			if inner.Kind() == reflect.Struct {
				for k, v := range yamlFields(inner) {
					fields[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f
	}
	return fields
}

func sortedKeys(m map[string]reflect.StructField) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func joinPath(parent, field string) string {
	if parent == "" {
		return field
	}
	return parent + "." + field
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func describeType(t reflect.Type) string {
	if t == durationType {
		return "a duration such as 500ms or 2m"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Struct:
		return "a mapping"
	case reflect.Slice:
		return "a list"
	}
	return t.String()
}
