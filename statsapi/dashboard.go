package statsapi

import (
	"bytes"
	"embed"
	"fmt"
	"net/http"
	"strings"
)

// The dashboard is three static files: plain HTML, CSS and JS with no build
// step. The page polls GET /lbpool/stats and calls POST /lbpool/state on its
// own origin, on the admin endpoint or on a site route (siteroute.go);
// this file only serves the files.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardAsset is one embedded file and its content type.
type dashboardAsset struct {
	file        string
	contentType string
}

// dashboardAssets maps the names under the dashboard's folder (/lbpool/ on
// the admin endpoint, wherever a site route puts it) to the embedded files.
// The page links its assets and its routes relatively, so it works at
// every path it is served at.
var dashboardAssets = map[string]dashboardAsset{
	"":              {"dashboard/index.html", "text/html; charset=utf-8"},
	"dashboard":     {"dashboard/index.html", "text/html; charset=utf-8"},
	"dashboard.css": {"dashboard/dashboard.css", "text/css; charset=utf-8"},
	"dashboard.js":  {"dashboard/dashboard.js", "text/javascript; charset=utf-8"},
}

// dashboardCSP allows the page nothing but its own origin: no inline
// script or style, no other hosts, no framing (so no click on its buttons
// can be stolen). The data: image is the inline favicon (without one the
// browser asks for /favicon.ico in no-cors mode, which Caddy's admin
// endpoint rejects).
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// handleDashboard: GET /lbpool/ (or /lbpool/dashboard) and the page's assets.
// It is registered on the /lbpool/ subtree, so any other path there is a 404.
func (Admin) handleDashboard(w http.ResponseWriter, r *http.Request) error {
	name, _ := strings.CutPrefix(r.URL.Path, "/lbpool/")
	return serveDashboard(w, r, name, false)
}

// serveDashboard serves the page or one of its assets by its name under
// the dashboard's folder. A read-only page has no buttons: its body is
// marked data-read-only, and the script leaves them out.
func serveDashboard(w http.ResponseWriter, r *http.Request, name string, readOnly bool) error {
	asset, ok := dashboardAssets[name]
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("no such page: %s", r.URL.Path))
	}
	if err := onlyGet(r); err != nil {
		return err
	}
	body, err := dashboardFiles.ReadFile(asset.file)
	if err != nil {
		return apiError(http.StatusInternalServerError, fmt.Errorf("dashboard asset %s: %w", asset.file, err))
	}
	if readOnly && strings.HasPrefix(asset.contentType, "text/html") {
		body = bytes.Replace(body, []byte("<body>"), []byte("<body data-read-only>"), 1)
	}
	h := w.Header()
	h.Set("Content-Type", asset.contentType)
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	// revalidate, so a new Caddy build's page is picked up at once
	h.Set("Cache-Control", "no-cache")
	_, err = w.Write(body)
	return err
}
