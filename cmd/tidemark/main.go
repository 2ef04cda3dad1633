// Command tidemark is the one binary: the daemon (`run`) and the operator CLI.
//
// Each subcommand lives in its own file and registers itself from init, so the
// owners of capture, transform, sink, reconcile and rollout can add commands
// without touching this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
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

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.Name]; dup {
		panic("tidemark: command registered twice: " + c.Name)
	}
	commands[c.Name] = c
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
	c, ok := commands[args[0]]
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
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].Short)
	}
}
