package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

func init() {
	daemonParts = append(daemonParts, daemonPart{name: "reconcile", start: startReconcile})
	register(&command{Name: "reconcile", Short: "compare Cassandra with the transformed source now; print or --json the report", Run: reconcileCmd})
	register(&command{Name: "repair", Short: "re-emit divergent keys (from a report, or given _ids) from the source, then re-check them", Run: repairCmd})
}

// reconcileConns are the connections a reconciler needs, opened from the
// config where the daemon's roles did not already open them.
type reconcileConns struct {
	cass    *gocql.Session
	mongo   *mongo.Client
	closers []func()
}

func (c *reconcileConns) close() {
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
}

func openReconcileConns(ctx context.Context, cfg *Config, cass *gocql.Session, mc *mongo.Client) (*reconcileConns, error) {
	c := &reconcileConns{cass: cass, mongo: mc}
	if c.cass == nil {
		cl, err := cfg.cassandraCluster()
		if err != nil {
			return nil, err
		}
		if c.cass, err = cl.CreateSession(); err != nil {
			return nil, fmt.Errorf("cannot reach Cassandra at %v: %w", cfg.Cassandra.Hosts, err)
		}
		c.closers = append(c.closers, c.cass.Close)
	}
	if c.mongo == nil {
		mo, err := cfg.mongoOptions()
		if err != nil {
			c.close()
			return nil, err
		}
		if c.mongo, err = mongo.Connect(ctx, mo); err == nil {
			err = c.mongo.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
		}
		if err != nil {
			c.close()
			return nil, fmt.Errorf("cannot reach MongoDB: %w", err)
		}
		m := c.mongo
		c.closers = append(c.closers, func() { m.Disconnect(context.Background()) })
	}
	return c, nil
}

func newReconciler(cfg *Config, d reconcile.Deps, adm *kadm.Client, applied func(string, int32) envelope.Version) (*reconcile.Reconciler, error) {
	d.Lag = &reconcile.PipelineLag{Store: d.Store, Admin: adm, Mongo: d.Mongo, Group: cfg.Reconcile.SinkGroup,
		TopicPrefix: cfg.Capture.TopicPrefix, Applied: applied, Settle: cfg.Reconcile.Settle, OplogReads: cfg.Reconcile.OplogReads}
	return reconcile.New(cfg.Reconcile, d)
}

// startReconcile adds the report routes, on-demand rounds and the schedule.
func startReconcile(ctx context.Context, d *daemon, srv *admin.Server, g *errgroup.Group) error {
	if d.mapping == nil {
		d.log.Info("reconcile is off: the config names no spec")
		return nil
	}
	conns, err := openReconcileConns(ctx, d.cfg, d.cass, d.mongo)
	if err != nil {
		// The roles this daemon runs do not need both servers; reconcile
		// does. Without them it stays off rather than stopping the daemon.
		d.log.Warn("reconcile is off: cannot reach its servers", "err", err)
		return nil
	}
	g.Go(func() error { <-ctx.Done(); conns.close(); return nil })
	var applied func(string, int32) envelope.Version
	if d.sink != nil {
		applied = d.sink.Applied
	}
	rec, err := newReconciler(d.cfg, reconcile.Deps{Mongo: conns.mongo, Cassandra: conns.cass, Mapping: d.mapping, Store: d.store,
		Logger: d.log, Registerer: d.reg, Slice: rolloutSlice(d.cfg, d.store)}, d.adm, applied)
	if err != nil {
		return err
	}
	h := &reconcileHandlers{rec: rec, ctx: ctx, mapping: d.mapping, g: g, log: d.log}
	srv.Handle("GET /v1/reports", http.HandlerFunc(h.list), false)
	srv.Handle("GET /v1/reports/{id}", http.HandlerFunc(h.get), false)
	srv.Handle("GET /v1/reconcile", http.HandlerFunc(h.progress), false)
	srv.Handle("POST /v1/reconcile", http.HandlerFunc(h.start), true)
	srv.Handle("POST /v1/repair", http.HandlerFunc(h.repair), true)
	if every := d.cfg.Reconcile.Interval; every > 0 {
		log := d.log.With("stage", "reconcile")
		schedule := func(ctx context.Context) error { return scheduleRounds(ctx, rec, d.mapping, every, nil, log) }
		if d.elector != nil {
			fence := d.leaderFence("reconcile")
			schedule = func(ctx context.Context) error { return scheduleRounds(ctx, rec, d.mapping, every, fence, log) }
			// A round cut short when the role moves is resumed by the next
			// leader's round of the same scope.
			g.Go(func() error { return d.elector.Lead(ctx, schedule) })
		} else {
			g.Go(func() error { return schedule(ctx) })
		}
	}
	return nil
}

// scheduleRounds runs a round of every namespace each interval. Without an
// election, run the schedule on one daemon (interval 0 on the others).
// fence, when set, is asked before a round writes shared state.
func scheduleRounds(ctx context.Context, rec *reconcile.Reconciler, m *transform.Mapping, every time.Duration,
	fence func(context.Context) error, log interface{ Warn(string, ...any) }) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, ns := range m.Namespaces() {
			_, err := rec.Round(ctx, reconcile.Scope{Namespace: ns}, reconcile.RoundOptions{Actor: "auto:reconcile", Reason: "scheduled", Fence: fence})
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				log.Warn("scheduled round failed", "namespace", ns, "err", err)
			}
		}
	}
}

type reconcileHandlers struct {
	rec     *reconcile.Reconciler
	ctx     context.Context // the daemon's: rounds outlive the request
	mapping *transform.Mapping
	// g runs rounds started through the API, so the daemon's shutdown waits
	// for them to write their reports. They never fail the group.
	g   *errgroup.Group
	log interface{ Warn(string, ...any) }
}

// ReportListing is one entry of GET /v1/reports.
type ReportListing struct {
	ID     string           `json:"id"`
	Status string           `json:"status"`
	Scope  string           `json:"scope"`
	Start  time.Time        `json:"start"`
	End    time.Time        `json:"end"`
	Counts map[string]int64 `json:"counts"`
}

func (h *reconcileHandlers) list(w http.ResponseWriter, r *http.Request) {
	ids, err := h.rec.Reports().List()
	if err != nil {
		admin.WriteError(w, 500, err)
		return
	}
	if len(ids) > 100 {
		ids = ids[len(ids)-100:]
	}
	out := []ReportListing{}
	for i := len(ids) - 1; i >= 0; i-- {
		rep, err := h.rec.Reports().Get(ids[i])
		if err != nil {
			continue
		}
		out = append(out, ReportListing{ID: rep.ID, Status: rep.Status, Scope: rep.Scope.Key(), Start: rep.Start, End: rep.End, Counts: rep.Counts})
	}
	admin.WriteJSON(w, 200, out)
}

func (h *reconcileHandlers) get(w http.ResponseWriter, r *http.Request) {
	rep, err := h.rec.Reports().Get(r.PathValue("id"))
	if errors.Is(err, reconcile.ErrNoReport) {
		admin.WriteError(w, 404, err)
		return
	}
	if err != nil {
		admin.WriteError(w, 500, err)
		return
	}
	admin.WriteJSON(w, 200, rep)
}

// RoundStatus is GET /v1/reconcile and the answer to POST /v1/reconcile.
type RoundStatus struct {
	Running  bool                `json:"running"`
	Progress *reconcile.Progress `json:"progress,omitempty"`
}

func (h *reconcileHandlers) progress(w http.ResponseWriter, r *http.Request) {
	p, ok := h.rec.Current()
	st := RoundStatus{Running: ok}
	if ok {
		st.Progress = &p
	}
	admin.WriteJSON(w, 200, st)
}

// RoundRequest is the body of POST /v1/reconcile.
type RoundRequest struct {
	Reason string          `json:"reason"`
	Scope  reconcile.Scope `json:"scope"`
	Fresh  bool            `json:"fresh,omitempty"`
}

func (h *reconcileHandlers) start(w http.ResponseWriter, r *http.Request) {
	var req RoundRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	if req.Scope.Namespace == "" {
		admin.WriteError(w, 400, fmt.Errorf("scope.namespace is required (one of %s)", strings.Join(h.mapping.Namespaces(), ", ")))
		return
	}
	if _, running := h.rec.Current(); running {
		admin.WriteError(w, 409, reconcile.ErrBusy)
		return
	}
	actor := admin.Actor(r.Context())
	errc := make(chan error, 1)
	h.g.Go(func() error {
		_, err := h.rec.Round(h.ctx, req.Scope, reconcile.RoundOptions{Actor: actor, Reason: req.Reason, Fresh: req.Fresh})
		if err != nil && h.ctx.Err() == nil {
			h.log.Warn("round failed", "scope", req.Scope.Key(), "err", err)
		}
		errc <- err
		return nil
	})
	// Answer with the round's id once it has one (or its early failure).
	deadline := time.After(30 * time.Second)
	for {
		if p, ok := h.rec.Current(); ok {
			admin.WriteJSON(w, 202, RoundStatus{Running: true, Progress: &p})
			return
		}
		select {
		case err := <-errc:
			if err == nil {
				admin.WriteJSON(w, 200, RoundStatus{})
				return
			}
			code := 500
			if errors.Is(err, reconcile.ErrBusy) {
				code = 409
			}
			admin.WriteError(w, code, err)
			return
		case <-deadline:
			admin.WriteError(w, 504, errors.New("the round has not started within 30s"))
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RepairRequest is the body of POST /v1/repair: a report's divergent keys,
// or the given _ids of a namespace.
type RepairRequest struct {
	Reason    string   `json:"reason"`
	Report    string   `json:"report,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	IDs       []string `json:"ids,omitempty"`
	// Keys are target rows (table and canonical key bytes, as a report's
	// divergent list or repair's output gives them) of Namespace.
	Keys []reconcile.KeyRef `json:"keys,omitempty"`
}

func (h *reconcileHandlers) repair(w http.ResponseWriter, r *http.Request) {
	var req RepairRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	res, err := runRepair(r.Context(), h.rec, req, admin.Actor(r.Context()))
	if err != nil {
		admin.WriteError(w, statusOf(err), err)
		return
	}
	admin.WriteJSON(w, 200, res)
}

func runRepair(ctx context.Context, rec *reconcile.Reconciler, req RepairRequest, actor string) (*reconcile.RepairResult, error) {
	var keys []reconcile.KeyRef
	ns := req.Namespace
	given := 0
	for _, g := range []bool{req.Report != "", len(req.IDs) > 0, len(req.Keys) > 0} {
		if g {
			given++
		}
	}
	switch {
	case given > 1:
		return nil, invalidf("give one of a report, _ids or keys")
	case len(req.Keys) > 0:
		if ns == "" {
			return nil, invalidf("namespace is required with keys")
		}
		keys = req.Keys
	case req.Report != "":
		rep, err := rec.Reports().Get(req.Report)
		if err != nil {
			if errors.Is(err, reconcile.ErrNoReport) {
				return nil, &kindError{kind: errNotFound, msg: err.Error()}
			}
			return nil, err
		}
		if rep.Truncated {
			return nil, conflictf("report %s is truncated (more divergent keys than reconcile.max_candidates); repair a narrower scope", rep.ID)
		}
		ns, keys = rep.Scope.Namespace, rep.Divergent
	case len(req.IDs) > 0:
		if ns == "" {
			return nil, invalidf("namespace is required with _ids")
		}
		var err error
		if keys, err = rec.KeysForIDs(ctx, ns, req.IDs); err != nil {
			return nil, &kindError{kind: errInvalid, msg: err.Error()}
		}
	default:
		return nil, invalidf("give a report id, _ids or keys")
	}
	if len(keys) == 0 {
		return &reconcile.RepairResult{Namespace: ns, Remaining: []reconcile.KeyRef{}}, nil
	}
	res, err := rec.Repair(ctx, ns, keys, reconcile.RepairOptions{Actor: actor, Reason: req.Reason})
	return res, err
}

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
	cfg, err := loadConfig(*f.cfgPath)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if *f.timeout > 0 {
		cfg.Reconcile.TimeBox = *f.timeout
	}
	rec, done, err := localReconciler(ctx, cfg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer done()
	namespaces := []string{*f.ns}
	if *f.ns == "" {
		namespaces = rec.namespaces
	}
	worst := 0
	for _, ns := range namespaces {
		scope.Namespace = ns
		rep, err := rec.Round(ctx, scope, reconcile.RoundOptions{Actor: "cli:" + envOr("USER", "operator"), Reason: orDefault(*f.reason, "tidemark reconcile"),
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

type localRec struct {
	*reconcile.Reconciler
	namespaces []string
}

// localReconciler connects to the servers of cfg for a round run by the CLI.
func localReconciler(ctx context.Context, cfg *Config) (*localRec, func(), error) {
	if cfg.Spec == "" {
		return nil, nil, errors.New("the config names no spec: reconcile compares against the spec's transform")
	}
	m, err := transform.Load(cfg.Spec)
	if err != nil {
		return nil, nil, err
	}
	// The store the daemon uses, whatever its kind: a round run here reads
	// the same checkpoints (and its slice) as the daemon's rounds.
	store, err := cfg.openCheckpoints(ctx, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return nil, nil, err
	}
	conns, err := openReconcileConns(ctx, cfg, nil, nil)
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	kopts, err := cfg.kafkaOpts()
	if err != nil {
		return nil, nil, err
	}
	kcl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, nil, err
	}
	done := func() { kcl.Close(); conns.close(); store.Close() }
	rec, err := newReconciler(cfg, reconcile.Deps{Mongo: conns.mongo, Cassandra: conns.cass, Mapping: m, Store: store,
		Logger: newLogger(cfg.Log), Slice: rolloutSlice(cfg, store)}, kadm.NewClient(kcl), nil)
	if err != nil {
		done()
		return nil, nil, err
	}
	return &localRec{Reconciler: rec, namespaces: m.Namespaces()}, done, nil
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
	var st RoundStatus
	if err := cl.Do(ctx, "POST", "/v1/reconcile", RoundRequest{Reason: *f.reason, Scope: scope, Fresh: *f.fresh}, &st); err != nil {
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
		fmt.Fprintf(w, "  %-9s %s %v _id %s%s\n", s.Class, s.Table, s.PrimaryKey, orDefault(s.SourceID, "-"), cols)
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
	req := RepairRequest{Reason: *reason, Report: *report, Namespace: *ns}
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
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		rec, done, err := localReconciler(ctx, cfg)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		defer done()
		if res, err = runRepair(ctx, rec.Reconciler, req, "cli:"+envOr("USER", "operator")); err != nil {
			if statusOf(err) < 500 {
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

// rolloutSlice gives a round the rollout plan's current slice when the config
// has a plan: the sink writes only those keys, so only they are expected.
// Without a plan (or before its first evaluation) every document is.
func rolloutSlice(cfg *Config, store checkpoints.Store) func(context.Context) (func(string, []byte) bool, string, error) {
	if len(cfg.Rollout.Stages) == 0 {
		return nil
	}
	return func(ctx context.Context) (func(string, []byte) bool, string, error) {
		sl, ok, err := rollout.CurrentSlice(ctx, store)
		if err != nil || !ok {
			return nil, "", err
		}
		var parts []string
		for _, ns := range sl.Namespaces() {
			parts = append(parts, fmt.Sprintf("%s:%.2f%%", ns, float64(sl[ns])*100/rollout.Buckets))
		}
		return sl.Contains, strings.Join(parts, ","), nil
	}
}
