//go:build tools

// Package deps pins the project's dependencies while the packages that use
// them are written.
package deps

import (
	_ "github.com/chromedp/chromedp"
	_ "github.com/digitalocean/go-qemu/qmp"
	_ "github.com/getkin/kin-openapi/openapi2conv"
	_ "github.com/jackc/puddle/v2"
	_ "github.com/jonboulle/clockwork"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sys/unix"
	_ "gonum.org/v1/plot"
	_ "gopkg.in/yaml.v3"
)
