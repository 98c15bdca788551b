// Package cli is the `caddy lbpool` command: status, top, drain, maint, ready
// and weight, for an operator at a terminal. It is a client of the admin
// endpoint's /lbpool/ routes and knows the handler only through their JSON.
package cli

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "lbpool",
		Usage: "status|top|drain|maint|ready|weight [--address <interface>]",
		Short: "Shows lbpool's backends and changes their state at run time",
		Long: `
Talks to the admin endpoint of a running Caddy: 'status' prints every backend
of every pool (state, requests in flight, requests per second, failures,
latency, memory, last health check); 'top' shows the same, refreshed every
second, with keys to drain, maint and ready the selected backend; 'drain',
'maint' and 'ready' set a backend's admin state and 'weight' its weight.

The admin address is the --address flag if given; else the admin address of
the config named by --config (and --adapter); else Caddy's default
(localhost:2019, or the CADDY_ADMIN environment variable), as 'caddy reload'
finds it.
`,
		CobraFunc: func(cmd *cobra.Command) {
			flags := cmd.PersistentFlags()
			flags.String("address", "", "Address of the administration listener, if different from config")
			flags.StringP("config", "c", "", "Configuration file whose admin address to use")
			flags.StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.AddCommand(statusCommand(), topCommand())
			for _, state := range []string{"drain", "maint", "ready"} {
				cmd.AddCommand(stateCommand(state))
			}
			cmd.AddCommand(weightCommand())
		},
	})
}

// run adapts a command function to Cobra as Caddy's own commands are
// adapted: an error is logged as one line and the exit code is 1.
func run(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
			if err := f(cmd, args); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			return caddy.ExitCodeSuccess, nil
		})(cmd, args)
	}
}

// adminFor is the admin client of a command, from its --address, --config
// and --adapter flags.
func adminFor(cmd *cobra.Command) (*admin, error) {
	flags := cmd.Flags()
	address, _ := flags.GetString("address")
	config, _ := flags.GetString("config")
	adapter, _ := flags.GetString("adapter")
	addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, config, adapter)
	if err != nil {
		return nil, fmt.Errorf("finding the admin address: %v", err)
	}
	return newAdmin(addr)
}
