package daemon

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestTCPRejectsBrowserRequests(t *testing.T) {
	text := strings.Replace(testConfig(t, t.TempDir()), "listen:\n", "listen:\n  tcp: 127.0.0.1:0\n", 1)
	td := startTestDaemon(t, text, nil)
	addr := td.Addrs()[1].String()
	body := `{"stack": {"name": "py", "version": "3.12", "vcpus": 1, "memory_mib": 256}, "cold_fallback": true}`

	tests := []struct {
		name    string
		method  string
		path    string
		host    string
		headers map[string]string
		want    int
	}{
		{"foreign host", "POST", "/v1/acquire", "evil.example.com",
			map[string]string{"Content-Type": "application/json"}, http.StatusForbidden},
		{"foreign host on GET", "GET", "/v1/pools", "evil.example.com:80", nil, http.StatusForbidden},
		{"foreign origin", "POST", "/v1/acquire", addr,
			map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example.com"}, http.StatusForbidden},
		{"form content type", "POST", "/v1/acquire", addr,
			map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType},
		{"missing content type", "POST", "/v1/acquire", addr, nil, http.StatusUnsupportedMediaType},
		{"same origin", "POST", "/v1/acquire", addr,
			map[string]string{"Content-Type": "application/json", "Origin": "http://" + addr}, http.StatusOK},
		{"localhost host", "GET", "/v1/pools", "localhost:1234", nil, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, "http://"+addr+tt.path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d (body %s)", resp.StatusCode, tt.want, data)
			}
		})
	}

	// The unix socket is out of a browser's reach and keeps accepting
	// bodies without a Content-Type.
	if status, out := td.do(t, "POST", "/v1/acquire", body); status != http.StatusOK {
		t.Errorf("acquire over the unix socket: status %d, body %s", status, out)
	}
}
