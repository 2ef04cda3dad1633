package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/daemon"
)

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "tidemark.yaml", "config file (YAML); see examples/tidemark.yaml")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tidemark run --config FILE\n\nRuns the roles the config names until SIGTERM. Secrets come from files or\nenvironment variables named in the config reference, never from flags.")
		fs.PrintDefaults()
	}
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	err = daemon.Run(ctx, cfg)
	if se := (*daemon.SetupError)(nil); errors.As(err, &se) {
		return &exitError{code: 2, err: err}
	}
	return err
}
