package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Bounds of one admin request: the admin endpoint answers from memory, so
// a request that takes longer is stuck.
const (
	adminTimeout = 10 * time.Second
	maxAnswer    = 16 << 20
)

// admin is a client of the admin endpoint at one address (TCP, unix socket
// or file descriptor, as Caddy's admin listener takes them).
type admin struct {
	addr   string // as the user gave it, for errors
	origin string
	client *http.Client
}

func newAdmin(addr string) (*admin, error) {
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("admin %s: not an admin address: %v", addr, err)
	}
	origin := "http://" + na.JoinHostPort(0)
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		// the Host of a request on a socket: the admin endpoint allows it
		origin = "http://127.0.0.1"
		// a unix socket's permission bits are not part of its path
		na.Host, _, _ = strings.Cut(na.Host, "|")
	}
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, na.Network, na.JoinHostPort(0))
	}
	return &admin{
		addr:   addr,
		origin: origin,
		client: &http.Client{
			Timeout:   adminTimeout,
			Transport: &http.Transport{DialContext: dial, MaxIdleConns: 2},
		},
	}, nil
}

// do sends one request and decodes a 2xx answer into out. Any other answer
// is an error naming the admin address, the request and the admin's error.
func (a *admin) do(method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.origin+path, reader)
	if err != nil {
		return a.errorf(method, path, "%v", err)
	}
	req.Header.Set("Origin", a.origin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL is the made-up origin; the address is named already
		}
		return a.errorf(method, path, "%v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return a.errorf(method, path, "reading the answer: %v", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.Join(strings.Fields(string(data)), " ")
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return a.errorf(method, path, "%s: %s", resp.Status, msg)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return a.errorf(method, path, "not lbpool's answer (is lbpool in this Caddy?): %v", err)
	}
	return nil
}

func (a *admin) errorf(method, path, format string, args ...any) error {
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	return fmt.Errorf("admin %s: %s %s: %s", a.addr, method, path, msg)
}

// stats reads every backend of one pool, or of every pool when pool is "".
func (a *admin) stats(pool string) ([]backend, error) {
	path := "/lbpool/stats"
	if pool != "" {
		path += "?pool=" + url.QueryEscape(pool)
	}
	var out []backend
	err := a.do(http.MethodGet, path, nil, &out)
	return out, err
}

// change is the body of POST /lbpool/state.
type change struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	State   string `json:"state,omitempty"`
	// Weight is a number, or null for the configured weight; nil leaves it.
	Weight json.RawMessage `json:"weight,omitempty"`
}

// set applies a change and returns the backend as it is after it.
func (a *admin) set(c change) (backend, error) {
	var out backend
	err := a.do(http.MethodPost, "/lbpool/state", c, &out)
	return out, err
}
