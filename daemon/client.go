package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/warmpool/warmpool/vm"
)

// Client calls a daemon's API over its unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the daemon serving on socketPath.
func NewClient(socketPath string) *Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
	}
	return &Client{http: &http.Client{Transport: transport}}
}

// Acquire requests a VM of req.Stack.
func (c *Client) Acquire(ctx context.Context, req AcquireRequest) (AcquireResponse, error) {
	var resp AcquireResponse
	err := c.do(ctx, http.MethodPost, "/v1/acquire", req, &resp)
	return resp, err
}

// Pools returns the pool's buckets.
func (c *Client) Pools(ctx context.Context) (PoolsResponse, error) {
	var resp PoolsResponse
	err := c.do(ctx, http.MethodGet, "/v1/pools", nil, &resp)
	return resp, err
}

// VMs returns the handed-out VMs.
func (c *Client) VMs(ctx context.Context) (VMsResponse, error) {
	var resp VMsResponse
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &resp)
	return resp, err
}

// Destroy destroys the handed-out VM with the given id.
func (c *Client) Destroy(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(id), nil, nil)
}

// Register adds a stack to the pool.
func (c *Client) Register(ctx context.Context, req RegisterRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/stacks", req, nil)
}

// Unregister removes a stack from the pool and destroys its warm VMs.
func (c *Client) Unregister(ctx context.Context, key vm.StackKey) error {
	path := "/v1/stacks/" + url.PathEscape(key.Name) + "/" + url.PathEscape(key.Version) + "/" +
		strconv.Itoa(key.VCPUs) + "/" + strconv.Itoa(key.MemoryMiB)
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// do sends one request. A response with status 400 or above becomes an
// error carrying the daemon's message.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		reader = bytes.NewReader(data)
	}

	// The host is ignored because the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://warmpool"+path, reader)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is warmpool serve running?)", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}

	if resp.StatusCode >= 400 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}
