package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--pool <name>] [--json] [--interval <duration>]",
		Short: "Prints every backend of every pool in one table",
		Long: `
Prints one line per backend: pool, backend, state (MAINT, DRAIN, DOWN, EJECTED,
HELD, LEAVING or UP), weight, requests in flight, requests per second,
failures, latency (moving average to response headers), memory (from
stats_uri) and the last health check.

Requests per second are measured over --interval (default 1s) between two
reads of the stats; --interval 0 reads once and shows none.
`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().String("pool", "", "Show this pool only")
	cmd.Flags().Bool("json", false, "Print the rows as a JSON array")
	cmd.Flags().Duration("interval", time.Second, "Time between the two reads that give requests per second")
	cmd.RunE = run(func(cmd *cobra.Command, _ []string) error {
		a, err := adminFor(cmd)
		if err != nil {
			return err
		}
		pool, _ := cmd.Flags().GetString("pool")
		asJSON, _ := cmd.Flags().GetBool("json")
		interval, _ := cmd.Flags().GetDuration("interval")
		rs, err := readRows(a, pool, interval)
		if err != nil {
			return err
		}
		if asJSON {
			data, err := json.MarshalIndent(rs, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(os.Stdout, "%s\n", data)
			return err
		}
		_, err = fmt.Fprintln(os.Stdout, strings.Join(table(rs, time.Now()), "\n"))
		return err
	})
	return cmd
}

// readRows reads the stats, and again after interval for the request
// rates when interval is over 0.
func readRows(a *admin, pool string, interval time.Duration) ([]row, error) {
	bs, err := a.stats(pool)
	if err != nil {
		return nil, err
	}
	first := newSample(time.Now(), bs)
	if interval <= 0 {
		return rows(bs, first, nil), nil
	}
	time.Sleep(interval)
	if bs, err = a.stats(pool); err != nil {
		return nil, err
	}
	return rows(bs, newSample(time.Now(), bs), &first), nil
}

func stateCommand(state string) *cobra.Command {
	what := map[string]string{
		"drain": "Drains a backend: no new requests, in-flight ones finish, checks go on",
		"maint": "Puts a backend in maintenance: no requests and no checks",
		"ready": "Puts a backend back in rotation",
	}[state]
	cmd := &cobra.Command{
		Use:   state + " <backend> [--pool <name>]",
		Short: what,
		Long: what + `.

The backend is named as configured (127.0.0.1:9001) or as status shows it
(http://127.0.0.1:9001). Without --pool, the pool is the one that has it;
a backend in several pools needs --pool. The change survives reloads.
`,
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().String("pool", "", "The backend's pool")
	cmd.RunE = run(func(cmd *cobra.Command, args []string) error {
		return applyChange(cmd, change{Backend: args[0], State: state})
	})
	return cmd
}

func weightCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "weight <backend> <n>|configured [--pool <name>]",
		Short: "Sets a backend's weight at run time",
		Long: `
Sets the backend's weight (1 to 10000) in place of the configured one, as
HAProxy's 'set weight' does; 'configured' returns it to the configured
weight. The backend and --pool are named as for drain.
`,
		Args: cobra.ExactArgs(2),
	}
	cmd.Flags().String("pool", "", "The backend's pool")
	cmd.RunE = run(func(cmd *cobra.Command, args []string) error {
		weight := json.RawMessage("null")
		if args[1] != "configured" {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > 10000 {
				return fmt.Errorf("weight %q: want a whole number from 1 to 10000, or configured", args[1])
			}
			weight = json.RawMessage(strconv.Itoa(n))
		}
		return applyChange(cmd, change{Backend: args[0], Weight: weight})
	})
	return cmd
}

// applyChange finds the backend's pool when --pool is not given, applies
// the change and prints the backend as it is after it.
func applyChange(cmd *cobra.Command, c change) error {
	a, err := adminFor(cmd)
	if err != nil {
		return err
	}
	c.Pool, _ = cmd.Flags().GetString("pool")
	if c.Pool == "" {
		if c.Pool, err = poolOf(a, c.Backend); err != nil {
			return err
		}
	}
	b, err := a.set(c)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(os.Stdout, "%s %s: %s, weight %d (configured %d)\n",
		b.Pool, b.URL, displayState(b), b.Weight, b.ConfiguredWeight)
	return err
}

// poolOf is the one pool that has the backend, named as configured or as
// stats show it.
func poolOf(a *admin, name string) (string, error) {
	bs, err := a.stats("")
	if err != nil {
		return "", err
	}
	var pools []string
	for _, b := range bs {
		if sameBackend(b.URL, name) {
			pools = append(pools, b.Pool)
		}
	}
	switch len(pools) {
	case 0:
		return "", fmt.Errorf("admin %s: no pool has a backend %s", a.addr, name)
	case 1:
		return pools[0], nil
	}
	return "", fmt.Errorf("admin %s: backend %s is in pools %s: name one with --pool", a.addr, name, strings.Join(pools, ", "))
}

// sameBackend tells whether a user's name of a backend (127.0.0.1:9001)
// is the URL stats show (http://127.0.0.1:9001); the admin endpoint is the
// judge once the pool is known.
func sameBackend(url, name string) bool {
	if url == name {
		return true
	}
	_, rest, ok := strings.Cut(url, "://")
	return ok && rest == name
}
