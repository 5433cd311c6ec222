// Package api is a small client for the Firecracker HTTP API, spoken over
// the unix socket that Firecracker opens with --api-sock.
//
// Every call has a deadline. A request that Firecracker rejects returns an
// *APIError carrying its status code and fault_message. A request that never
// got a response returns a *TransportError. Callers retry only the latter.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// DefaultTimeout bounds a call when the client's timeout is 0.
const DefaultTimeout = 5 * time.Second

type callTimeoutKey struct{}

// WithCallTimeout returns a context under which each call is bounded by d
// in place of the client's timeout, for calls that take longer, such as
// writing a large snapshot. The earlier deadline of ctx still applies.
func WithCallTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, callTimeoutKey{}, d)
}

// APIError is a response from Firecracker with a status code of 400 or more.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker api: %s %s: status %d: %s", e.Method, e.Path, e.StatusCode, e.FaultMessage)
}

// IsBadRequest reports whether Firecracker rejected the request itself
// (status 4xx): sending it again cannot succeed.
func (e *APIError) IsBadRequest() bool { return e.StatusCode >= 400 && e.StatusCode < 500 }

// TransportError is a call that got no response: the socket could not be
// dialed, the connection broke, or the deadline passed.
type TransportError struct {
	Method string
	Path   string
	Err    error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("firecracker api: %s %s: %v", e.Method, e.Path, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// IsBadRequest reports whether err contains an *APIError with a 4xx status.
func IsBadRequest(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.IsBadRequest()
}

// UnsupportedError is a request that the running Firecracker version cannot
// take. It is returned before anything is sent.
type UnsupportedError struct {
	Feature string
	Need    Version
	Have    Version
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("firecracker api: %s needs Firecracker %s or later, the process runs %s", e.Feature, e.Need, e.Have)
}

// Client calls one Firecracker process. It is safe for concurrent use.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client

	mu      sync.Mutex // guards version; held for no I/O
	version Version
}

// New returns a client for the API socket at socketPath. Each call is
// bounded by timeout, or DefaultTimeout when timeout is 0, and by the
// deadline of its context, whichever comes first.
func New(socketPath string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return DialUnix(ctx, socketPath)
		},
		DisableCompression: true,
		MaxIdleConns:       2,
		IdleConnTimeout:    30 * time.Second,
	}
	return &Client{socket: socketPath, timeout: timeout, http: &http.Client{Transport: transport}}
}

// Socket returns the API socket path.
func (c *Client) Socket() string { return c.socket }

// Close drops idle connections to the socket.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// do sends one request with body encoded as JSON (none when body is nil)
// and decodes a 2xx response into out when out is not nil.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	timeout := c.timeout
	if d, ok := ctx.Value(callTimeoutKey{}).(time.Duration); ok {
		timeout = d
	}
	// WithTimeout keeps the caller's deadline when it is earlier.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &TransportError{Method: method, Path: path, Err: err}
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &TransportError{Method: method, Path: path, Err: fmt.Errorf("read response: %w", err)}
	}
	if resp.StatusCode >= 400 {
		var fault Fault
		if json.Unmarshal(data, &fault) != nil || fault.FaultMessage == "" {
			fault.FaultMessage = string(bytes.TrimSpace(data))
		}
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, FaultMessage: fault.FaultMessage}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return &TransportError{Method: method, Path: path, Err: fmt.Errorf("decode response: %w", err)}
		}
	}
	return nil
}

// NewRequest builds the HTTP request that a call would send, without
// sending it. Tests use it to validate requests against the API description.
func (c *Client) NewRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	return c.newRequest(ctx, method, path, body)
}

func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("firecracker api: %s %s: encode body: %w", method, path, err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, reader)
	if err != nil {
		return nil, fmt.Errorf("firecracker api: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}
