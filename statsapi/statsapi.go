// Package statsapi is the admin.api.lbpool module: routes on Caddy's admin
// endpoint that show every lbpool backend's live stats (as JSON and as a
// live dashboard page) and set backends' admin state (ready, drain, maint)
// at run time; the http.handlers.lbpool_dashboard handler serves the
// dashboard and the same routes on a site (siteroute.go).
//
// The module is stateless: Caddy creates a new one on every config load. It
// reads copies of backend state from the leastconn registry and holds no
// lock while it writes a response.
package statsapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/leastconn"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// maxStateBody bounds a POST /lbpool/state body.
const maxStateBody = 64 << 10

// Admin serves /lbpool/stats, /lbpool/state, /lbpool/discovery and the
// dashboard at /lbpool/ on the admin endpoint.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.lbpool",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the admin routes.
func (a Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/lbpool/stats", Handler: caddy.AdminHandlerFunc(a.handleStats)},
		{Pattern: "/lbpool/state", Handler: caddy.AdminHandlerFunc(a.handleState)},
		{Pattern: "/lbpool/discovery", Handler: caddy.AdminHandlerFunc(a.handleDiscovery)},
		{Pattern: "/lbpool/pools", Handler: caddy.AdminHandlerFunc(a.handlePools)},
		{Pattern: "/lbpool/fleet", Handler: caddy.AdminHandlerFunc(a.handleFleet)},
		{Pattern: "/lbpool/", Handler: caddy.AdminHandlerFunc(a.handleDashboard)},
	}
}

// handleStats: GET /lbpool/stats[?pool=name].
func (Admin) handleStats(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGet(r); err != nil {
		return err
	}
	stats, err := leastconn.Stats(r.URL.Query().Get("pool"))
	if err != nil {
		return apiError(http.StatusNotFound, err)
	}
	if stats == nil {
		stats = []leastconn.BackendStats{}
	}
	return writeJSON(w, http.StatusOK, stats)
}

// handlePools: GET /lbpool/pools, every pool's queue (depth, queued,
// timed out) and ejected backends; GET /lbpool/stats keeps its shape, one
// object per backend.
func (Admin) handlePools(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGet(r); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, leastconn.Pools())
}

// handleDiscovery: GET /lbpool/discovery, every DNS source with its member
// count, its last lookup and the error of that lookup ("" when it worked).
func (Admin) handleDiscovery(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGet(r); err != nil {
		return err
	}
	sources := leastconn.Discovery()
	if sources == nil {
		sources = []leastconn.DiscoveryStatus{}
	}
	return writeJSON(w, http.StatusOK, sources)
}

// handleFleet: GET /lbpool/fleet, every pool's fleet state sync: its
// interval, storage, last sync, the storage's error ("" when it works) and
// the changes waiting to be written.
func (Admin) handleFleet(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGet(r); err != nil {
		return err
	}
	pools := leastconn.Fleet()
	if pools == nil {
		pools = []leastconn.FleetStatus{}
	}
	return writeJSON(w, http.StatusOK, pools)
}

// StateRequest is the body of POST /lbpool/state: a state, a weight, or both.
type StateRequest struct {
	// The pool's name.
	Pool string `json:"pool"`
	// The backend, as configured or as stats show it.
	Backend string `json:"backend"`
	// The admin state: ready, drain or maint. Empty leaves it.
	State string `json:"state,omitempty"`
	// A weight from 1 to 10000 in place of the configured one; null returns
	// to the configured weight; absent leaves the weight.
	Weight OptionalWeight `json:"weight,omitzero"`
}

// OptionalWeight is a JSON weight that tells absent (Set false) from null
// (Set, Value nil).
type OptionalWeight struct {
	Set   bool
	Value *int
}

// UnmarshalJSON reads a whole number or null.
func (o *OptionalWeight) UnmarshalJSON(data []byte) error {
	o.Set = true
	if string(data) == "null" {
		o.Value = nil
		return nil
	}
	var n int
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("weight must be a whole number or null")
	}
	o.Value = &n
	return nil
}

// MarshalJSON writes the number, or null.
func (o OptionalWeight) MarshalJSON() ([]byte, error) {
	if o.Value == nil {
		return []byte("null"), nil
	}
	return json.Marshal(*o.Value)
}

// IsZero is true when no weight was given.
func (o OptionalWeight) IsZero() bool { return !o.Set }

// handleState: POST /lbpool/state.
func (Admin) handleState(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST", r.Method))
	}
	data, err := readBody(w, r, maxStateBody)
	if err != nil {
		return err
	}
	req, err := decodeStateRequest(data)
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	stats, err := leastconn.Change(req.Pool, req.Backend, leastconn.RuntimeChange{
		State: req.State, SetWeight: req.Weight.Set, Weight: req.Weight.Value})
	switch {
	case errors.Is(err, leastconn.ErrBadState), errors.Is(err, leastconn.ErrBadWeight):
		return apiError(http.StatusBadRequest, err)
	case err != nil:
		return apiError(http.StatusNotFound, err)
	}
	return writeJSON(w, http.StatusOK, stats)
}

// readBody reads a whole request body of at most limit bytes. Nothing is
// decoded before the end of the body is known, so a body over the limit is a
// 413 whatever its first bytes hold.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("body over %d bytes", limit))
	case err != nil:
		return nil, apiError(http.StatusBadRequest, fmt.Errorf("reading the body: %w", err))
	}
	return data, nil
}

// decodeStateRequest reads a body that is one JSON object with pool,
// backend, and a state, a weight or both; only JSON whitespace may follow
// the object.
func decodeStateRequest(body []byte) (StateRequest, error) {
	var req StateRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("bad JSON: %v", err)
	}
	if rest := bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return req, errors.New("bad JSON: more than whitespace after the object")
	}
	if req.Pool == "" || req.Backend == "" || (req.State == "" && !req.Weight.Set) {
		return req, errors.New("pool, backend, and a state or a weight are required")
	}
	if w := req.Weight.Value; w != nil && (*w < 1 || *w > leastconn.MaxWeight) {
		return req, leastconn.ErrBadWeight
	}
	return req, nil
}

// onlyGet is the answer to a method other than GET and HEAD on a read route.
func onlyGet(r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET", r.Method))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return apiError(http.StatusInternalServerError, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// apiError is the one error form of these routes: Caddy's admin server
// writes it as a JSON body with an "error" field.
func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

// Interface guards.
var (
	_ caddy.Module      = (*Admin)(nil)
	_ caddy.AdminRouter = (*Admin)(nil)
)
