package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/reconcile"
)

const reconcileHelp = `usage: tidemark reconcile [--config FILE | --remote] [--namespace NS] [--table KS.TABLE]
                          [--ids ID,ID...] [--min-token N --max-token N] [--fresh] [--json]

Runs one reconcile round now: every source document goes through the spec's
transform, expected and actual rows are hashed into token-range Merkle
leaves, differing leaves are narrowed to keys and each key is re-checked by
point reads; keys the sink has not caught up with are in flight, not
divergent. Progress (percent, rate, ETA) goes to stderr; the report is
written to reconcile.report_dir and printed (--json: as JSON).

Directly against the servers of --config (default), or with --remote through
a running daemon's admin API (--addr, --token-file; needs --reason).
Without --namespace, every namespace of the spec is reconciled in turn.

Exit status: 0 clean; 1 divergent or incomplete; 2 usage, config or connection error.

Flags:`

type roundFlags struct {
	cf                 clientFlags
	cfgPath, ns, table *string
	ids                *string
	minTok, maxTok     *int64
	fresh, remote      *bool
	reason             *string
	timeout            *time.Duration
}

func reconcileCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("reconcile", "reconcile", stderr)
	f := roundFlags{cf: cf,
		cfgPath: cf.fs.String("config", "tidemark.yaml", "daemon config (YAML): connections, spec, reconcile section"),
		ns:      cf.fs.String("namespace", "", "source namespace db.collection (default: every namespace of the spec)"),
		table:   cf.fs.String("table", "", "only this target table, keyspace.table"),
		ids:     cf.fs.String("ids", "", "only these _ids, comma-separated relaxed extended JSON (42,\"abc\",{\"$oid\":\"...\"})"),
		minTok:  cf.fs.Int64("min-token", -1<<63, "only partition key tokens from this one"),
		maxTok:  cf.fs.Int64("max-token", 1<<63-1, "only partition key tokens up to this one"),
		fresh:   cf.fs.Bool("fresh", false, "start over instead of resuming the scope's incomplete round"),
		remote:  cf.fs.Bool("remote", false, "run the round in the daemon at --addr instead of here"),
		reason:  cf.fs.String("reason", "", "why (required with --remote; goes to the audit log)"),
		timeout: cf.fs.Duration("timeout", 0, "give up after this long (default: the config's reconcile.time_box)"),
	}
	cf.fs.Usage = func() { fmt.Fprintln(stderr, reconcileHelp); cf.fs.PrintDefaults() }
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	if cf.fs.NArg() > 0 {
		return &exitError{code: 2, err: fmt.Errorf("unexpected argument %q (tidemark reconcile --help)", cf.fs.Arg(0))}
	}
	scope := reconcile.Scope{Table: *f.table}
	if *f.ids != "" {
		scope.IDs = strings.Split(*f.ids, ",")
	}
	setTok := map[string]bool{}
	cf.fs.Visit(func(fl *flag.Flag) { setTok[fl.Name] = true })
	if setTok["min-token"] {
		scope.MinToken = f.minTok
	}
	if setTok["max-token"] {
		scope.MaxToken = f.maxTok
	}
	if *f.remote {
		return remoteRound(ctx, f, scope, stdout, stderr)
	}
	cfg, err := config.Load(*f.cfgPath)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if *f.timeout > 0 {
		cfg.Reconcile.TimeBox = *f.timeout
	}
	rec, done, err := daemon.OpenLocal(ctx, cfg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer done()
	namespaces := []string{*f.ns}
	if *f.ns == "" {
		namespaces = rec.Namespaces
	}
	worst := 0
	for _, ns := range namespaces {
		scope.Namespace = ns
		rep, err := rec.Round(ctx, scope, reconcile.RoundOptions{Actor: "cli:" + envOr("USER", "operator"), Reason: cmp.Or(*f.reason, "tidemark reconcile"),
			Fresh: *f.fresh, OnProgress: func(p reconcile.Progress) { printProgress(stderr, p) }})
		fmt.Fprintln(stderr)
		if rep == nil {
			return &exitError{code: 2, err: err}
		}
		if err := printReport(stdout, rep, *cf.json); err != nil {
			return err
		}
		if rep.Status != "clean" {
			worst = 1
		}
	}
	if worst != 0 {
		return &exitError{code: 1, err: errors.New("the round is not clean (see the report)")}
	}
	return nil
}

func remoteRound(ctx context.Context, f roundFlags, scope reconcile.Scope, stdout, stderr io.Writer) error {
	if *f.ns == "" {
		return &exitError{code: 2, err: errors.New("--remote needs --namespace")}
	}
	scope.Namespace = *f.ns
	cl, err := f.cf.client()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var st daemon.RoundStatus
	if err := cl.Do(ctx, "POST", "/v1/reconcile", daemon.RoundRequest{Reason: *f.reason, Scope: scope, Fresh: *f.fresh}, &st); err != nil {
		return err
	}
	if st.Progress == nil {
		return errors.New("the daemon started no round")
	}
	id := st.Progress.ID
	for st.Running && st.Progress != nil && st.Progress.ID == id {
		printProgress(stderr, *st.Progress)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		if err := cl.Do(ctx, "GET", "/v1/reconcile", nil, &st); err != nil {
			return err
		}
	}
	fmt.Fprintln(stderr)
	var rep reconcile.Report
	if err := cl.Do(ctx, "GET", "/v1/reports/"+id, nil, &rep); err != nil {
		return err
	}
	if err := printReport(stdout, &rep, *f.cf.json); err != nil {
		return err
	}
	if rep.Status != "clean" {
		return &exitError{code: 1, err: errors.New("the round is not clean (see the report)")}
	}
	return nil
}

func printProgress(w io.Writer, p reconcile.Progress) {
	eta := "-"
	if p.ETASeconds > 0 {
		eta = (time.Duration(p.ETASeconds) * time.Second).String()
	}
	fmt.Fprintf(w, "\r%s %-7s %5.1f%%  %d docs  %d rows  %.0f rows/s  ETA %s   ", p.ID, p.Phase, p.Percent, p.DocsDone, p.RowsDone, p.RowsPerSecond, eta)
}

func printReport(w io.Writer, r *reconcile.Report, asJSON bool) error {
	if asJSON {
		return printJSON(w, r)
	}
	fmt.Fprintf(w, "round %s  %s  scope %s  spec %s/%.12s\n", r.ID, strings.ToUpper(r.Status), r.Scope.Key(), r.SpecVersion, r.SpecChecksum)
	fmt.Fprintf(w, "  %s, %d documents, %d rows compared (%.0f rows/s), %d candidates re-checked\n",
		(time.Duration(r.DurationSeconds*1000) * time.Millisecond).String(), r.DocsScanned, r.RowsCompared, r.RowsPerSecond, r.Candidates)
	fmt.Fprintf(w, "  %-32s %9s %9s %7s %7s %9s %7s %9s\n", "table", "source", "target", "missing", "extra", "different", "stale", "in flight")
	for _, t := range r.Tables {
		fmt.Fprintf(w, "  %-32s %9d %9d %7d %7d %9d %7d %9d\n", t.Table, t.RowsSource, t.RowsTarget, t.Missing, t.Extra, t.Different, t.Stale, t.InFlight)
	}
	for _, s := range r.Sample {
		cols := ""
		if len(s.Columns) > 0 {
			cols = " columns " + strings.Join(s.Columns, ",")
		}
		fmt.Fprintf(w, "  %-9s %s %v _id %s%s\n", s.Class, s.Table, s.PrimaryKey, cmp.Or(s.SourceID, "-"), cols)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "  incomplete: %s (the next round of this scope resumes it)\n", r.Error)
	}
	return nil
}

const repairHelp = `usage: tidemark repair --report ID | --namespace NS (--ids ID,ID... | --keys KS.TABLE:HEX,...)
                       [--config FILE | --remote] --reason TEXT

Re-emits the documents behind divergent keys from the source through
capture's targeted backfill (a daemon with the capture role serves it),
removes extra rows that no document maps to (a tombstone at the row's own
write time, so a newer pipeline write still wins), then re-checks every key.
--report takes a report id or "latest". --keys takes target rows as repair
prints the ones still differing (table:hex of the canonical key); prefer --ids
when the documents are known, since a key alone names no document to re-emit
unless the row is there to be traced back to one.

Exit status: 0 every key fixed; 1 some keys still differ; 2 usage or connection error.

Flags:`

func repairCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("repair", "repair", stderr)
	cfgPath := cf.fs.String("config", "tidemark.yaml", "daemon config (YAML)")
	report := cf.fs.String("report", "", "repair every divergent key of this report (an id, or latest)")
	ns := cf.fs.String("namespace", "", "namespace of --ids")
	ids := cf.fs.String("ids", "", "_ids to re-emit and re-check, comma-separated relaxed extended JSON")
	keys := cf.fs.String("keys", "", "target rows to repair, comma-separated keyspace.table:HEX (as repair prints them)")
	remote := cf.fs.Bool("remote", false, "ask the daemon at --addr to repair")
	reason := cf.fs.String("reason", "", "why (required; goes to the audit log)")
	cf.fs.Usage = func() { fmt.Fprintln(stderr, repairHelp); cf.fs.PrintDefaults() }
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	if strings.TrimSpace(*reason) == "" {
		return &exitError{code: 2, err: errors.New("--reason is required: every repair is audited")}
	}
	req := daemon.RepairRequest{Reason: *reason, Report: *report, Namespace: *ns}
	if *ids != "" {
		req.IDs = strings.Split(*ids, ",")
	}
	if *keys != "" {
		for _, k := range strings.Split(*keys, ",") {
			table, h, ok := strings.Cut(k, ":")
			b, err := hex.DecodeString(h)
			if !ok || err != nil || table == "" {
				return &exitError{code: 2, err: fmt.Errorf("--keys: %q is not keyspace.table:HEX", k)}
			}
			req.Keys = append(req.Keys, reconcile.KeyRef{Table: table, Key: b})
		}
	}
	var res *reconcile.RepairResult
	if *remote {
		cl, err := cf.client()
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		res = &reconcile.RepairResult{}
		if err := cl.Do(ctx, "POST", "/v1/repair", req, res); err != nil {
			return err
		}
	} else {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		rec, done, err := daemon.OpenLocal(ctx, cfg)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		defer done()
		if res, err = daemon.Repair(ctx, rec.Reconciler, req, "cli:"+envOr("USER", "operator")); err != nil {
			if daemon.StatusOf(err) < 500 {
				return &exitError{code: 2, err: err}
			}
			return err
		}
	}
	if *cf.json {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "repair %s: %d documents re-emitted, %d extra rows removed, %d keys fixed, %d still differ\n",
			res.Namespace, res.Reemitted, res.Deleted, res.Fixed, len(res.Remaining))
		for _, k := range res.Remaining {
			fmt.Fprintf(stdout, "  %s %s:%x\n", k.Class, k.Table, k.Key)
		}
	}
	if len(res.Remaining) > 0 {
		return &exitError{code: 1, err: errors.New("some keys still differ")}
	}
	return nil
}
