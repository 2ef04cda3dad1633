package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/config"
)

const checkpointsHelp = `usage: tidemark checkpoints copy --from DIR [--config FILE] --reason TEXT [--json]

Copies every key (resume tokens, backfill progress, marks, operator intent,
rollout state) and every audit entry of the file store in DIR into the store
--config names (checkpoints.kind: kafka), which must hold no keys yet (its
audit entries stay). Every key is read
back and compared. Stop every daemon first: nothing may write to either store
while it runs. The copy itself is audited in the destination.

Exit status: 0 copied; 1 the copy failed; 2 usage error or a non-empty destination.

Flags:`

func checkpointsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "copy" {
		fmt.Fprintln(stderr, checkpointsHelp)
		return &exitError{code: 2, err: errors.New("the only subcommand is copy")}
	}
	fs := flag.NewFlagSet("checkpoints copy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "directory of the file store to copy")
	cfgPath := fs.String("config", "tidemark.yaml", "daemon config whose checkpoints section names the destination")
	reason := fs.String("reason", "", "why (required; goes to the audit log)")
	asJSON := fs.Bool("json", false, "print JSON for machines")
	fs.Usage = func() { fmt.Fprintln(stderr, checkpointsHelp); fs.PrintDefaults() }
	if err := parseArgs(fs, args[1:]); err != nil {
		return &exitError{code: 2, err: err}
	}
	if *from == "" || strings.TrimSpace(*reason) == "" {
		return &exitError{code: 2, err: errors.New("--from and --reason are required")}
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if cfg.Checkpoints.Kind == "file" {
		a, _ := filepath.Abs(*from)
		b, _ := filepath.Abs(cfg.Checkpoints.Dir)
		if a == b {
			return &exitError{code: 2, err: errors.New("--from is the configured store itself")}
		}
	}
	src, err := checkpoints.OpenFile(*from)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer src.Close()
	dst, err := cfg.OpenCheckpoints(ctx, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return err
	}
	defer dst.Close()
	res, err := checkpoints.Copy(ctx, dst, src)
	if errors.Is(err, checkpoints.ErrNotEmpty) {
		return &exitError{code: 2, err: err}
	}
	result := "ok"
	if err != nil {
		result = "failed: " + err.Error()
	}
	if aerr := dst.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: "cli:" + envOr("USER", "operator"), Action: "checkpoints.copy",
		Target: cfg.Checkpoints.Kind, Reason: *reason, Result: result,
		Details: map[string]any{"from": *from, "keys": res.Keys, "audit_entries": res.AuditEntries}}); err == nil {
		err = aerr
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, map[string]any{"from": *from, "store": cfg.Checkpoints.Kind, "keys": res.Keys, "audit_entries": res.AuditEntries})
	}
	fmt.Fprintf(stdout, "copied %d keys and %d audit entries from %s into the %s store\n", res.Keys, res.AuditEntries, *from, cfg.Checkpoints.Kind)
	return nil
}
