package daemon

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// guardTCP rejects requests over the loopback TCP listener that a web page
// in a browser on the host could have sent. Any page can reach loopback
// through DNS rebinding or a cross-origin form post. So a request over TCP
// must name localhost or a loopback IP as its Host and carry no foreign
// Origin on a method that changes state. A POST body must be
// application/json, which an HTML form cannot send. Requests over the unix
// socket pass unchanged because a browser cannot reach it.
func (d *Daemon) guardTCP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && addr.Network() == "tcp" {
			if err := checkTCPRequest(r); err != nil {
				d.log.Warn("TCP request rejected", "method", r.Method, "path", r.URL.Path,
					"remote", r.RemoteAddr, "error", err)
				writeError(w, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// checkTCPRequest returns the API error for a TCP request that guardTCP
// rejects, or nil.
func checkTCPRequest(r *http.Request) error {
	if !isLoopbackHost(r.Host) {
		return &apiError{status: http.StatusForbidden,
			msg: fmt.Sprintf("invalid Host %q: over TCP the API accepts only localhost or a loopback IP", r.Host)}
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != "http://"+r.Host {
		return &apiError{status: http.StatusForbidden,
			msg: fmt.Sprintf("cross-origin request from %q rejected: the API accepts only same-origin requests over TCP", origin)}
	}
	if r.Method == http.MethodPost {
		mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mediaType != "application/json" {
			return &apiError{status: http.StatusUnsupportedMediaType,
				msg: fmt.Sprintf("invalid Content-Type %q: send the body as application/json", r.Header.Get("Content-Type"))}
		}
	}
	return nil
}

// isLoopbackHost reports whether a Host header names localhost or a
// loopback IP, with or without a port.
func isLoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
