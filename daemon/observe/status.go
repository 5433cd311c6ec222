package observe

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"net/http"

	"github.com/warmpool/warmpool/pool"
)

// StatusJSONPath is the path, relative to the status page's own URL, that the
// page polls for fresh data. Serve StatusJSONHandler there, or use
// StatusRoutes, which does both.
const StatusJSONPath = "status.json"

// refreshMillis is how often the status page polls StatusJSONPath.
const refreshMillis = 1000

//go:embed assets/status.html assets/status.css assets/status.js
var assets embed.FS

// page is the parsed status page template with its inline style and script
// and the Content-Security-Policy that allows exactly those two.
type page struct {
	template *template.Template
	style    template.CSS
	script   template.JS
	policy   string
}

// statusPage is parsed once, because the embedded files cannot change at
// run time and a broken template is a build error that every test reports.
var statusPage = mustParsePage()

func mustParsePage() page {
	tmpl := template.Must(template.ParseFS(assets, "assets/status.html"))
	style, err := assets.ReadFile("assets/status.css")
	if err != nil {
		panic(err)
	}
	script, err := assets.ReadFile("assets/status.js")
	if err != nil {
		panic(err)
	}
	policy := "default-src 'none'; connect-src 'self'; base-uri 'none'; form-action 'none'; " +
		"frame-ancestors 'none'; style-src " + sourceHash(style) + "; script-src " + sourceHash(script)
	return page{
		template: tmpl,
		style:    template.CSS(style),
		script:   template.JS(script),
		policy:   policy,
	}
}

// sourceHash returns the CSP source expression that allows one inline
// element whose text is exactly content.
func sourceHash(content []byte) string {
	sum := sha256.Sum256(content)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// pageData is the template's input.
type pageData struct {
	Status        statusView
	Style         template.CSS
	Script        template.JS
	JSONPath      string
	RefreshMillis int
}

// StatusHandler returns the HTML status page: one row per bucket with its
// depth against its target, hit rate, misses and last error, and the recent
// events. The page is complete without JavaScript. With it, the page polls
// StatusJSONPath, relative to its own URL, every second and updates itself.
// The handler serves only GET and HEAD of "/" (or "" under
// http.StripPrefix) and returns 404 for any other path.
func (r *Recorder) StatusHandler(stats func() pool.Stats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/" && req.URL.Path != "" {
			http.NotFound(w, req)
			return
		}
		if !allowRead(w, req) {
			return
		}

		data := pageData{
			Status:        r.status(stats),
			Style:         statusPage.style,
			Script:        statusPage.script,
			JSONPath:      StatusJSONPath,
			RefreshMillis: refreshMillis,
		}
		var body bytes.Buffer
		if err := statusPage.template.Execute(&body, data); err != nil {
			http.Error(w, "status page: render template: "+err.Error(), http.StatusInternalServerError)
			return
		}

		header := w.Header()
		header.Set("Content-Type", "text/html; charset=utf-8")
		header.Set("Cache-Control", "no-store")
		header.Set("Content-Security-Policy", statusPage.policy)
		header.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body.Bytes())
	})
}

// StatusJSONHandler returns the data the status page polls: the same values
// the page shows, already formatted, with the raw counts beside them. It
// serves only GET and HEAD.
func (r *Recorder) StatusJSONHandler(stats func() pool.Stats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !allowRead(w, req) {
			return
		}

		body, err := json.Marshal(r.status(stats))
		if err != nil {
			http.Error(w, "status: encode JSON: "+err.Error(), http.StatusInternalServerError)
			return
		}

		header := w.Header()
		header.Set("Content-Type", "application/json")
		header.Set("Cache-Control", "no-store")
		header.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(append(body, '\n'))
	})
}

// StatusRoutes returns a handler that serves StatusHandler at "/" and
// StatusJSONHandler at "/"+StatusJSONPath, and 404 for any other path.
func (r *Recorder) StatusRoutes(stats func() pool.Stats) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/{$}", r.StatusHandler(stats))
	mux.Handle("/"+StatusJSONPath, r.StatusJSONHandler(stats))
	return mux
}

// SetHandedOutCount makes the status page show the number of handed-out
// VMs, which count returns. A negative result shows no count. Count is
// called on every page load and poll, so it must return quickly.
func (r *Recorder) SetHandedOutCount(count func() int) {
	r.handedOutCount.Store(&count)
}

func (r *Recorder) status(stats func() pool.Stats) statusView {
	handedOut := -1
	if count := r.handedOutCount.Load(); count != nil {
		handedOut = (*count)()
	}
	return buildStatusView(stats(), r.RecentEvents(), r.clock.Now(), handedOut)
}

// allowRead rejects any method but GET and HEAD with 405 and reports whether
// the request may go on.
func allowRead(w http.ResponseWriter, req *http.Request) bool {
	if req.Method == http.MethodGet || req.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method "+req.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
	return false
}
