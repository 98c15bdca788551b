// Package lbpool registers lbpool's Caddy modules: the http.handlers.lbpool
// load-balancing handler and the admin.api.lbpool admin routes. Build a Caddy
// with both by adding this module path to xcaddy:
//
//	xcaddy build --with github.com/lbpool/lbpool
package lbpool

import (
	_ "github.com/lbpool/lbpool/leastconn"
	_ "github.com/lbpool/lbpool/statsapi"
)
