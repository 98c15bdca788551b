// Command caddy is Caddy with the standard modules and lbpool, the same binary
// xcaddy builds. It lets tests and the offline build use one command:
//
//	go build -o caddy ./cmd/caddy
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/lbpool/lbpool"
)

func main() {
	caddycmd.Main()
}
