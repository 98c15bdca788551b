package statsapi

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The dashboard on a site route: the http.handlers.lbpool_dashboard
// handler serves the page, the stats it reads (stats, pools) and, unless
// read only, its state changes (state) at any path of a site, so that it
// sits behind the site's own basic_auth or forward_auth, where HAProxy's
// stats page sits in a frontend. It answers through the admin routes' own
// handlers; a state change there must also come from the page's origin
// with a JSON body, so no other site can make a browser send one.

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("lbpool_dashboard", parseDashboard)
	// after metrics, so before lbpool (also before reverse_proxy): a site
	// whose lbpool takes every path still shows the dashboard at its own
	httpcaddyfile.RegisterDirectiveOrder("lbpool_dashboard", httpcaddyfile.After, "metrics")
}

// Dashboard serves lbpool's dashboard on a site route: the page at the
// route's folder (a path ending in /, or .../dashboard), its assets, and
// GET .../stats, GET .../pools and POST .../state as the admin endpoint
// serves them under /lbpool/. Give it a path matcher (/lbpool/*) and put
// an authentication handler before it.
type Dashboard struct {
	// Serve the page and the stats only: no buttons, and POST .../state
	// is refused.
	ReadOnly bool `json:"read_only,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lbpool_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// crossOrigin refuses state changes a browser sends from another origin
// (Sec-Fetch-Site, else Origin against Host); requests without either
// come from no browser.
var crossOrigin = http.NewCrossOriginProtection()

// ServeHTTP serves the page, its assets and its routes by the last part
// of the path; anything else is a 404.
func (d Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	name := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	var a Admin
	var err error
	switch name {
	case "stats":
		err = a.handleStats(w, r)
	case "pools":
		err = a.handlePools(w, r)
	case "state":
		err = d.checkStateChange(r)
		if err == nil {
			err = a.handleState(w, r)
		}
	default:
		err = serveDashboard(w, r, name, d.ReadOnly)
	}
	var ae caddy.APIError
	if errors.As(err, &ae) {
		writeAPIError(w, ae)
	}
	return nil // any other error is the client's connection failing
}

// checkStateChange lets a state change through when the handler allows
// them and a browser could only have sent it from the page: same origin,
// and a JSON body (which no form can send).
func (d Dashboard) checkStateChange(r *http.Request) error {
	if d.ReadOnly {
		return apiError(http.StatusForbidden, errors.New("this dashboard is read only"))
	}
	if r.Method != http.MethodPost {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST", r.Method))
	}
	if err := crossOrigin.Check(r); err != nil {
		return apiError(http.StatusForbidden, fmt.Errorf("state changes come from the dashboard's own origin: %w", err))
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return apiError(http.StatusUnsupportedMediaType, errors.New("state changes have Content-Type: application/json"))
	}
	return nil
}

// writeAPIError writes an admin route's error as the admin endpoint
// does: its status, and a JSON body with an "error" field, which the page
// shows.
func writeAPIError(w http.ResponseWriter, ae caddy.APIError) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_ = writeJSON(w, ae.HTTPStatus, map[string]string{"error": ae.Err.Error()})
}

// UnmarshalCaddyfile reads:
//
//	lbpool_dashboard [<matcher>] [read_only]
func (d *Dashboard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // the directive's name
	for disp.NextArg() {
		switch disp.Val() {
		case "read_only":
			if d.ReadOnly {
				return disp.Errf("lbpool_dashboard: read_only is given twice")
			}
			d.ReadOnly = true
		default:
			return disp.Errf("lbpool_dashboard: unknown option %q; the only one is read_only (a path matcher goes first)", disp.Val())
		}
	}
	if disp.NextBlock(0) {
		return disp.Errf("lbpool_dashboard takes no block, only read_only")
	}
	return nil
}

func parseDashboard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := new(Dashboard)
	err := d.UnmarshalCaddyfile(h.Dispenser)
	return d, err
}

// Interface guards.
var (
	_ caddy.Module                = (*Dashboard)(nil)
	_ caddyhttp.MiddlewareHandler = (*Dashboard)(nil)
	_ caddyfile.Unmarshaler       = (*Dashboard)(nil)
)
