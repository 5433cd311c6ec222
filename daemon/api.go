package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warmpool/warmpool/daemon/observe"
	"github.com/warmpool/warmpool/daemon/state"
	"github.com/warmpool/warmpool/pool"
	"github.com/warmpool/warmpool/vm"
)

// maxBodyBytes bounds a request body. Larger bodies get 413.
const maxBodyBytes = 64 << 10

// maxWaitMS caps wait_ms before max_acquire_wait applies, so that the
// conversion to a time.Duration cannot overflow.
const maxWaitMS = 24 * 60 * 60 * 1000

// AcquireRequest is the body of POST /v1/acquire.
type AcquireRequest struct {
	Stack vm.StackKey `json:"stack"`
	// WaitMS is how long to wait for a refill when no VM is warm, in
	// milliseconds. The daemon's max_acquire_wait caps it.
	WaitMS int64 `json:"wait_ms,omitempty"`
	// ColdFallback restores a VM directly from the stack's snapshot when
	// none is warm after the wait.
	ColdFallback bool `json:"cold_fallback,omitempty"`
}

// AcquireResponse is the body of a successful POST /v1/acquire.
type AcquireResponse struct {
	VM state.Record `json:"vm"`
	// Outcome is "hit" for a warm VM and "cold" for one restored for this
	// request.
	Outcome string `json:"outcome"`
}

// RegisterRequest is the body of POST /v1/stacks.
type RegisterRequest struct {
	Key      vm.StackKey `json:"key"`
	Snapshot vm.Snapshot `json:"snapshot"`
	// MinDepth and MaxDepth default to the pool section's values.
	MinDepth *int `json:"min_depth,omitempty"`
	MaxDepth *int `json:"max_depth,omitempty"`
}

// PoolsResponse is the body of GET /v1/pools.
type PoolsResponse struct {
	Buckets []BucketStatus `json:"buckets"`
}

// BucketStatus is one stack's bucket. MinDepth and MaxDepth are its target:
// the refiller starts restores below MinDepth and fills up to MaxDepth.
type BucketStatus struct {
	Stack          vm.StackKey `json:"stack"`
	Snapshot       vm.Snapshot `json:"snapshot"`
	Warm           int         `json:"warm"`
	Restoring      int         `json:"restoring"`
	MinDepth       int         `json:"min_depth"`
	MaxDepth       int         `json:"max_depth"`
	Hits           uint64      `json:"hits"`
	Misses         uint64      `json:"misses"`
	Evictions      uint64      `json:"evictions"`
	RestoresOK     uint64      `json:"restores_ok"`
	RestoresFailed uint64      `json:"restores_failed"`
	LastError      string      `json:"last_error,omitempty"`
	LastErrorAt    *time.Time  `json:"last_error_at,omitempty"`
	RetryAt        *time.Time  `json:"retry_at,omitempty"`
}

// VMsResponse is the body of GET /v1/vms: the handed-out VMs.
type VMsResponse struct {
	VMs []state.Record `json:"vms"`
}

// ErrorResponse is the body of every 4xx and 5xx response.
type ErrorResponse struct {
	Error string `json:"error"`
}

// apiError is an error with the HTTP status it is sent with.
type apiError struct {
	status int
	msg    string
	cause  error // optional, for errors.Is
}

func (e *apiError) Error() string { return e.msg }

func (e *apiError) Unwrap() error { return e.cause }

// errUnknownStack marks the API error of a request for an unknown stack.
var errUnknownStack = errors.New("unknown stack")

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// Handler returns the daemon's HTTP API.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/acquire", d.handleAcquire)
	mux.HandleFunc("GET /v1/pools", d.handlePools)
	mux.HandleFunc("POST /v1/stacks", d.handleRegister)
	mux.HandleFunc("DELETE /v1/stacks/{name}/{version}/{vcpus}/{memory_mib}", d.handleUnregister)
	mux.HandleFunc("GET /v1/vms", d.handleListVMs)
	mux.HandleFunc("DELETE /v1/vms/{id}", d.handleDestroy)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", d.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.registry, promhttp.HandlerOpts{}))
	mux.Handle("GET /{$}", d.recorder.StatusHandler(d.pool.Stats))
	mux.Handle("GET /"+observe.StatusJSONPath, d.recorder.StatusJSONHandler(d.pool.Stats))
	return d.recoverPanics(d.guardTCP(jsonMuxErrors(mux)))
}

// jsonMuxErrors sends the 404 and 405 responses of mux as JSON errors, like
// every other error of the API. A 405 keeps the Allow header that mux sets.
func jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// No pattern matched, so h is the mux's plain-text error handler.
		// Run it against a writer that keeps only the status and headers.
		capture := &statusCapture{header: w.Header()}
		h.ServeHTTP(capture, r)
		switch capture.status {
		case http.StatusMethodNotAllowed:
			writeError(w, &apiError{status: capture.status, msg: fmt.Sprintf("method %s is not allowed on %s: use %s",
				r.Method, r.URL.Path, w.Header().Get("Allow"))})
		case http.StatusNotFound:
			writeError(w, &apiError{status: capture.status, msg: fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)})
		default:
			writeError(w, &apiError{status: capture.status, msg: http.StatusText(capture.status)})
		}
	})
}

// statusCapture is a ResponseWriter that records the status code and
// drops the body.
type statusCapture struct {
	header http.Header
	status int
}

func (c *statusCapture) Header() http.Header { return c.header }

func (c *statusCapture) WriteHeader(status int) { c.status = status }

func (c *statusCapture) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(p), nil
}

// recoverPanics turns a panic in a handler into a logged 500, so that no
// request can stop the daemon.
func (d *Daemon) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil || p == http.ErrAbortHandler {
				if p != nil {
					panic(p)
				}
				return
			}
			d.log.Error("panic in HTTP handler", "method", r.Method, "path", r.URL.Path,
				"error", fmt.Sprint(p), "stack", string(debug.Stack()))
			writeError(w, &apiError{status: http.StatusInternalServerError, msg: "internal error: see the daemon log"})
		}()
		next.ServeHTTP(w, r)
	})
}

func (d *Daemon) handleAcquire(w http.ResponseWriter, r *http.Request) {
	req, err := decodeAcquireRequest(readBody(w, r))
	if err != nil {
		writeError(w, err)
		return
	}
	start := d.clock.Now()
	rec, outcome, err := d.acquire(r.Context(), req)
	// A key the pool does not know is not observed, so that requests
	// cannot add metric series without bound.
	if !errors.Is(err, errUnknownStack) {
		d.recorder.ObserveAcquire(req.Stack, outcome, d.clock.Since(start))
	}
	if err != nil {
		writeError(w, err)
		return
	}
	d.log.Debug("VM handed out", "vm_id", rec.ID, "stack", rec.Stack.String(), "outcome", outcome)
	writeJSON(w, http.StatusOK, AcquireResponse{VM: rec, Outcome: outcome})
}

// acquire hands out a VM for req and records it as handed out. It returns
// the outcome label for metrics (hit, miss, cold or error) in every case.
func (d *Daemon) acquire(ctx context.Context, req AcquireRequest) (state.Record, string, error) {
	handle, err := d.pool.Acquire(ctx, req.Stack)
	if errors.Is(err, pool.ErrEmpty) && req.WaitMS > 0 {
		wait := min(time.Duration(req.WaitMS)*time.Millisecond, d.config().MaxAcquireWait)
		wctx, cancel := context.WithTimeout(ctx, wait)
		handle, err = d.pool.AcquireWait(wctx, req.Stack)
		cancel()
		if err != nil && ctx.Err() == nil && wctx.Err() != nil {
			err = fmt.Errorf("%w: waited %v", pool.ErrEmpty, wait)
		}
	}
	if errors.Is(err, pool.ErrEmpty) && req.ColdFallback {
		return d.acquireCold(ctx, req.Stack)
	}
	if err != nil {
		return state.Record{}, outcomeFor(err), acquireError(req.Stack, err)
	}

	rec := state.Record{Instance: handle.Instance, State: state.HandedOut, UpdatedAt: handle.AcquiredAt}
	if err := d.store.Put(rec); err != nil {
		d.destroyUnrecorded(rec.Instance, err)
		return state.Record{}, "error", &apiError{status: http.StatusInternalServerError, msg: "record handed-out VM: " + err.Error()}
	}
	return rec, "hit", nil
}

// acquireCold restores a VM for key straight from its bucket's snapshot.
func (d *Daemon) acquireCold(ctx context.Context, key vm.StackKey) (state.Record, string, error) {
	snap, err := d.pool.Snapshot(key)
	if err != nil {
		return state.Record{}, outcomeFor(err), acquireError(key, err)
	}
	id := pool.NewVMID(key)
	rec := state.Record{Instance: vm.Instance{ID: id, Stack: key, Snapshot: snap},
		State: state.Restoring, UpdatedAt: d.clock.Now()}
	if err := d.store.Put(rec); err != nil {
		return state.Record{}, "error", &apiError{status: http.StatusInternalServerError, msg: "record cold restore: " + err.Error()}
	}
	// Shutdown waits for restoring records to clear, so it must hear when
	// this one does.
	defer d.notifyRecordsChanged()

	rctx, cancel := context.WithTimeout(ctx, d.config().Pool.RestoreTimeout)
	inst, err := d.provider.Restore(rctx, id, key, snap)
	cancel()
	if err != nil {
		// The provider removed what it started, so the record goes too.
		if derr := d.store.Delete(id); derr != nil {
			d.log.Error("delete record failed", "vm_id", id, "stack", key.String(), "error", derr)
		}
		d.log.Warn("cold restore failed", "vm_id", id, "stack", key.String(), "error", err)
		return state.Record{}, "error", &apiError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("cold restore of %s failed: %v", key, err)}
	}

	rec = state.Record{Instance: inst, State: state.HandedOut, UpdatedAt: d.clock.Now()}
	if err := d.store.Put(rec); err != nil {
		d.destroyUnrecorded(inst, err)
		return state.Record{}, "error", &apiError{status: http.StatusInternalServerError, msg: "record handed-out VM: " + err.Error()}
	}
	return rec, "cold", nil
}

// destroyUnrecorded destroys a VM that could not be recorded as handed out,
// because a VM the store does not know about would survive a crash unseen.
func (d *Daemon) destroyUnrecorded(inst vm.Instance, recordErr error) {
	d.log.Error("record handed-out VM failed, destroying it", "vm_id", inst.ID,
		"stack", inst.Stack.String(), "error", recordErr)
	ctx, cancel := context.WithTimeout(context.Background(), d.config().Pool.DestroyTimeout)
	defer cancel()
	if err := d.provider.Destroy(ctx, inst); err != nil {
		d.log.Error("destroy failed", "vm_id", inst.ID, "stack", inst.Stack.String(), "error", err)
	}
}

func outcomeFor(err error) string {
	if errors.Is(err, pool.ErrEmpty) {
		return "miss"
	}
	return "error"
}

// acquireError maps a pool error to an API error.
func acquireError(key vm.StackKey, err error) error {
	switch {
	case errors.Is(err, pool.ErrUnknownStack):
		return &apiError{status: http.StatusNotFound, msg: fmt.Sprintf("unknown stack %s: register it first", key),
			cause: errUnknownStack}
	case errors.Is(err, pool.ErrEmpty):
		return &apiError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("no warm VM for stack %s: retry later, or set wait_ms or cold_fallback", key)}
	case errors.Is(err, pool.ErrClosed):
		return &apiError{status: http.StatusServiceUnavailable, msg: "pool is closed: the daemon is stopping"}
	case errors.Is(err, context.Canceled):
		// 499 is the status nginx logs for a client that closed the
		// connection. No client reads this response.
		return &apiError{status: 499, msg: "request canceled"}
	}
	return &apiError{status: http.StatusInternalServerError, msg: err.Error()}
}

func (d *Daemon) handlePools(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, poolsResponse(d.pool.Stats()))
}

func poolsResponse(stats pool.Stats) PoolsResponse {
	resp := PoolsResponse{Buckets: make([]BucketStatus, 0, len(stats.Buckets))}
	for _, b := range stats.Buckets {
		bs := BucketStatus{
			Stack: b.Key, Snapshot: b.Snapshot,
			Warm: b.Warm, Restoring: b.Restoring, MinDepth: b.MinDepth, MaxDepth: b.MaxDepth,
			Hits: b.Hits, Misses: b.Misses, Evictions: b.Evictions,
			RestoresOK: b.RestoresOK, RestoresFailed: b.RestoresFailed,
			LastError: b.LastError,
		}
		if !b.LastErrorAt.IsZero() {
			bs.LastErrorAt = &b.LastErrorAt
		}
		if !b.RetryAt.IsZero() {
			bs.RetryAt = &b.RetryAt
		}
		resp.Buckets = append(resp.Buckets, bs)
	}
	return resp
}

func (d *Daemon) handleRegister(w http.ResponseWriter, r *http.Request) {
	req, err := decodeRegisterRequest(readBody(w, r))
	if err != nil {
		writeError(w, err)
		return
	}
	cfg := d.config()
	sc := StackConfig{Key: req.Key, Snapshot: req.Snapshot, MinDepth: req.MinDepth, MaxDepth: req.MaxDepth}
	if errs := sc.validate("", cfg.Pool, d.provider.Name()); len(errs) > 0 {
		msgs := make([]string, 0, len(errs))
		for _, e := range errs {
			msgs = append(msgs, e.path+": "+e.msg)
		}
		writeError(w, badRequest("%s", strings.Join(msgs, "\n")))
		return
	}
	if err := d.checkSnapshot(sc.Key, sc.snapshot(d.provider.Name())); err != nil {
		writeError(w, badRequest("snapshot.path: %v", err))
		return
	}
	minDepth, maxDepth := sc.Depth(cfg.Pool)
	err = d.pool.Register(sc.Key, sc.snapshot(d.provider.Name()), pool.WithDepth(minDepth, maxDepth))
	switch {
	case errors.Is(err, pool.ErrAlreadyRegistered):
		writeError(w, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("stack %s is already registered: unregister it first", sc.Key)})
		return
	case errors.Is(err, pool.ErrClosed):
		writeError(w, acquireError(sc.Key, err))
		return
	case err != nil:
		writeError(w, badRequest("%v", err))
		return
	}
	d.log.Info("stack registered", "stack", sc.Key.String(), "min_depth", minDepth, "max_depth", maxDepth)
	writeJSON(w, http.StatusCreated, map[string]any{"stack": sc.Key})
}

func (d *Daemon) handleUnregister(w http.ResponseWriter, r *http.Request) {
	key, err := parseStackPath(r.PathValue("name"), r.PathValue("version"), r.PathValue("vcpus"), r.PathValue("memory_mib"))
	if err != nil {
		writeError(w, err)
		return
	}
	// The stack's warm VMs are destroyed even if the client goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), d.config().ShutdownTimeout)
	defer cancel()
	if err := d.pool.Unregister(ctx, key); err != nil {
		if errors.Is(err, pool.ErrUnknownStack) {
			writeError(w, &apiError{status: http.StatusNotFound, msg: fmt.Sprintf("unknown stack %s", key)})
			return
		}
		d.log.Error("unregister stack failed", "stack", key.String(), "error", err)
		writeError(w, &apiError{status: http.StatusInternalServerError, msg: err.Error()})
		return
	}
	d.recorder.ForgetStack(key)
	d.log.Info("stack unregistered", "stack", key.String())
	w.WriteHeader(http.StatusNoContent)
}

// parseStackPath builds a stack key from the path segments of
// DELETE /v1/stacks/{name}/{version}/{vcpus}/{memory_mib}.
func parseStackPath(name, version, vcpus, memory string) (vm.StackKey, error) {
	key := vm.StackKey{Name: name, Version: version}
	var err error
	if key.VCPUs, err = strconv.Atoi(vcpus); err != nil {
		return key, badRequest("invalid vcpus %q in path: expected an integer", vcpus)
	}
	if key.MemoryMiB, err = strconv.Atoi(memory); err != nil {
		return key, badRequest("invalid memory_mib %q in path: expected an integer", memory)
	}
	if err := key.Validate(); err != nil {
		return key, badRequest("%v", err)
	}
	return key, nil
}

func (d *Daemon) handleListVMs(w http.ResponseWriter, r *http.Request) {
	recs, err := d.store.ListState(state.HandedOut)
	if err != nil {
		d.log.Error("list handed-out VMs failed", "error", err)
		writeError(w, &apiError{status: http.StatusInternalServerError, msg: err.Error()})
		return
	}
	if recs == nil {
		recs = []state.Record{}
	}
	writeJSON(w, http.StatusOK, VMsResponse{VMs: recs})
}

func (d *Daemon) handleDestroy(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := vm.ValidateID(id); err != nil {
		writeError(w, badRequest("%v", err))
		return
	}
	if !d.startDestroy(id) {
		writeError(w, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("VM %s is already being destroyed", id)})
		return
	}
	defer d.endDestroy(id)

	rec, err := d.store.Get(id)
	if errors.Is(err, state.ErrNotFound) || (err == nil && rec.State != state.HandedOut) {
		writeError(w, &apiError{status: http.StatusNotFound, msg: fmt.Sprintf("no handed-out VM with id %s", id)})
		return
	}
	if err != nil {
		writeError(w, &apiError{status: http.StatusInternalServerError, msg: err.Error()})
		return
	}

	// A client that goes away does not stop the destroy halfway.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), d.config().Pool.DestroyTimeout)
	err = d.provider.Destroy(ctx, rec.Instance)
	cancel()
	if err != nil {
		d.log.Error("destroy failed", "vm_id", id, "stack", rec.Stack.String(), "error", err)
		writeError(w, &apiError{status: http.StatusInternalServerError, msg: fmt.Sprintf("destroy VM %s: %v: the VM stays listed, retry", id, err)})
		return
	}
	if err := d.store.Delete(id); err != nil {
		d.log.Error("delete record failed", "vm_id", id, "stack", rec.Stack.String(), "error", err)
	}
	d.log.Debug("VM destroyed", "vm_id", id, "stack", rec.Stack.String())
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) startDestroy(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.destroying[id] {
		return false
	}
	d.destroying[id] = true
	return true
}

func (d *Daemon) endDestroy(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.destroying, id)
}

// readBody reads a request body of at most maxBodyBytes. Its error is
// passed on to the decode functions, which turn it into a 413.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
}

func decodeAcquireRequest(body []byte, readErr error) (AcquireRequest, error) {
	var req AcquireRequest
	if err := decodeJSON(body, readErr, &req); err != nil {
		return req, err
	}
	if err := req.Stack.Validate(); err != nil {
		return req, badRequest("%v", err)
	}
	if req.WaitMS < 0 || req.WaitMS > maxWaitMS {
		return req, badRequest("invalid wait_ms %d: must be 0 to %d", req.WaitMS, maxWaitMS)
	}
	return req, nil
}

func decodeRegisterRequest(body []byte, readErr error) (RegisterRequest, error) {
	var req RegisterRequest
	err := decodeJSON(body, readErr, &req)
	return req, err
}

// decodeJSON decodes exactly one JSON object from body into v, rejecting
// unknown fields and trailing data.
func decodeJSON(body []byte, readErr error, v any) error {
	var tooLarge *http.MaxBytesError
	if errors.As(readErr, &tooLarge) {
		return &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit)}
	}
	if readErr != nil {
		return badRequest("read request body: %v", readErr)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return badRequest("request body is empty: send a JSON object")
	}

	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("invalid JSON: trailing data after the object at byte %d", dec.InputOffset())
	}
	return nil
}

func describeJSONError(err error) string {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return fmt.Sprintf("invalid JSON: expected an object, got %s", typeErr.Value)
		}
		return fmt.Sprintf("invalid field %s: expected %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of body"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid JSON: " + err.Error()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, msg: err.Error()}
	}
	writeJSON(w, ae.status, ErrorResponse{Error: ae.msg})
}
