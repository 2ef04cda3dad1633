// Command tidemark is the one binary: the daemon (`run`, package daemon)
// and the operator CLI. This package parses flags, presents answers to a
// person (or as JSON) and sets exit codes; the work lives in the packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one `tidemark <name>` subcommand.
type command struct {
	Name  string
	Short string // one line for the command list
	// Run executes the command. args excludes the command name. A returned
	// *exitError sets the exit status; any other error prints and exits 1.
	Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands are every subcommand, in the order `tidemark help` lists them.
var commands = []*command{
	{Name: "run", Short: "run the daemon (capture and/or sink roles, admin API, metrics)", Run: runCmd},
	{Name: "status", Short: "show roles, per-partition lag, paused partitions and backfill progress", Run: statusCmd},
	{Name: "pause", Short: "pause a topic or some of its partitions (nothing is lost; Kafka buffers)", Run: pauseCmd(true)},
	{Name: "resume", Short: "resume paused partitions", Run: pauseCmd(false)},
	{Name: "rewind", Short: "move the sink back (to a time, an offset, a verified mark, or by N records); dry run unless --execute", Run: rewindCmd},
	{Name: "backfill", Short: "re-emit a namespace, a filter or some _ids from the source (also the history-lost recovery)", Run: backfillCmd},
	{Name: "reconcile", Short: "compare Cassandra with the transformed source now; print or --json the report", Run: reconcileCmd},
	{Name: "repair", Short: "re-emit divergent keys (from a report, or given _ids) from the source, then re-check them", Run: repairCmd},
	{Name: "plan", Short: "show or steer the rollout plan: status, advance, abort, rollback, resume, drill", Run: planCmd},
	{Name: "trace", Short: "one document's journey: source, Kafka records, Cassandra rows, key map, verdicts", Run: traceCmd},
	{Name: "audit", Short: "show the audit log of operator and automatic actions; audit verify checks its HMAC chain", Run: auditCmd},
	{Name: "validate", Short: "check a spec against the live Cassandra schema and a sample of live documents (the first gate)", Run: validateCmd},
	{Name: "transform", Short: "print the rows a document (extended JSON) would become under a spec", Run: transformCmd},
	{Name: "checkpoints", Short: "copy a file checkpoint store into the configured store (the move to the Kafka store)", Run: checkpointsCmd},
}

func lookup(name string) (*command, bool) {
	for _, c := range commands {
		if c.Name == name {
			return c, true
		}
	}
	return nil, false
}

// exitError carries an exit status other than 1 (for example a failed gate).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "tidemark: unknown command %q; run `tidemark help` for the list\n", args[0])
		return 2
	}
	err := c.Run(ctx, args[1:], stdout, stderr)
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		if ee.err != nil {
			fmt.Fprintf(stderr, "tidemark %s: %v\n", c.Name, ee.err)
		}
		return ee.code
	default:
		fmt.Fprintf(stderr, "tidemark %s: %v\n", c.Name, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "tidemark moves a live MongoDB workload into Cassandra through Kafka, one verified slice at a time.")
	fmt.Fprintln(w, "\nUsage: tidemark <command> [flags]    (tidemark <command> --help for its flags)\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-11s %s\n", c.Name, c.Short)
	}
}
