// Package lbpool registers lbpool's Caddy modules: the http.handlers.lbpool
// load-balancing handler, the admin.api.lbpool admin routes, the
// http.handlers.lbpool_dashboard handler (the dashboard on a site route) and
// the `caddy lbpool` command. Build a Caddy with them by adding this module
// path to xcaddy:
//
//	xcaddy build --with github.com/lbpool/lbpool
package lbpool

import (
	_ "github.com/lbpool/lbpool/internal/cli"
	_ "github.com/lbpool/lbpool/leastconn"
	_ "github.com/lbpool/lbpool/statsapi"
)
