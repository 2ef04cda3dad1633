package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/validate"
)

func init() {
	register(&command{Name: "plan", Short: "show or steer the rollout plan: status, advance, abort, rollback, resume, drill", Run: planCmd})
	daemonParts = append(daemonParts, daemonPart{name: "rollout", start: startRollout})
}

// startRollout builds the plan's engine over this daemon's sink, store and
// metrics, runs its evaluation loop, and mounts the plan and route API.
func startRollout(ctx context.Context, d *daemon, srv *admin.Server, g *errgroup.Group) error {
	cfg := d.cfg.Rollout
	if !cfg.Enabled() {
		none := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			admin.WriteError(w, http.StatusNotFound, errors.New("no rollout plan configured (add a rollout: section with stages)"))
		})
		srv.Handle("GET /v1/plan", none, false)
		srv.Handle("GET /v1/route", none, false)
		srv.Handle("GET /v1/routes", none, false)
		return nil
	}
	sig := &rollout.PipelineSignals{Store: d.store, Gatherer: d.reg, Window: cfg.SignalWindow,
		TopicOf: func(ns string) string { return envelope.Topic(d.cfg.Sink.TopicPrefix, ns) }}
	if d.sink != nil {
		sig.Lag = d.sink.Lag
	}
	if d.mapping != nil {
		v := &validator{d: d}
		sig.Validate = v.check
		g.Go(func() error { <-ctx.Done(); v.close(); return nil })
	}
	deps := rollout.Deps{Store: d.store, Signals: sig, Actions: &daemonActions{d: d}, Logger: d.log, Registerer: d.reg}
	if d.elector != nil {
		deps.Deposed = func(err error) { d.elector.Deposed("rollout", err) }
	}
	e, err := rollout.NewEngine(cfg, deps)
	if err != nil {
		return err
	}
	if d.elector != nil {
		// Evaluate only while this daemon leads; follow the stored state
		// otherwise (rollout.follow keeps a daemon a follower for good).
		e.SetEvaluating(ctx, false)
	}
	if err := e.Start(ctx); err != nil {
		return err
	}
	g.Go(func() error { return e.Run(ctx) })
	if d.elector != nil {
		g.Go(func() error {
			for {
				// Each term's writes carry its epoch; a new term reloads
				// the state, as another leader may have changed it.
				epoch, changed := d.elector.Term()
				var retry <-chan time.Time
				if err := e.SetTerm(ctx, epoch); err != nil && ctx.Err() == nil {
					// Still a follower (the stored state could not be read):
					// try again while the role is this daemon's.
					d.log.Error("rollout: cannot take over the plan's evaluation; retrying", "err", err)
					retry = time.After(5 * time.Second)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-changed:
				case <-retry:
				}
			}
		})
	}
	h := &planAPI{e: e}
	srv.Handle("GET /v1/plan", http.HandlerFunc(h.status), false)
	srv.Handle("GET /v1/route", http.HandlerFunc(h.route), false)
	srv.Handle("GET /v1/routes", http.HandlerFunc(h.routes), false)
	srv.Handle("POST /v1/plan/advance", http.HandlerFunc(h.advance), true)
	srv.Handle("POST /v1/plan/abort", http.HandlerFunc(h.abort), true)
	srv.Handle("POST /v1/plan/rollback", http.HandlerFunc(h.rollback), true)
	srv.Handle("POST /v1/plan/resume", http.HandlerFunc(h.resume), true)
	srv.Handle("POST /v1/plan/drill", http.HandlerFunc(h.drill), true)
	return nil
}

// validator runs `tidemark validate`'s check for the type_compat signal,
// connecting to whichever server this daemon's roles did not already open.
type validator struct {
	d    *daemon
	mu   sync.Mutex
	mc   *mongo.Client
	cass *gocql.Session
}

func (v *validator) check(ctx context.Context) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	mc, cass := v.d.mongo, v.d.cass
	if mc == nil {
		if v.mc == nil {
			o, err := v.d.cfg.mongoOptions()
			if err != nil {
				return false, err
			}
			if v.mc, err = mongo.Connect(ctx, o); err != nil {
				return false, err
			}
		}
		mc = v.mc
	}
	if cass == nil {
		if v.cass == nil {
			cl, err := v.d.cfg.cassandraCluster()
			if err != nil {
				return false, err
			}
			if v.cass, err = cl.CreateSession(); err != nil {
				return false, err
			}
		}
		cass = v.cass
	}
	rep, err := validate.Check(ctx, v.d.mapping, cass, mc)
	if err != nil {
		return false, fmt.Errorf("validate: %w", err)
	}
	return rep.Pass, nil
}

func (v *validator) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mc != nil {
		v.mc.Disconnect(context.Background())
	}
	if v.cass != nil {
		v.cass.Close()
	}
}

// daemonActions carries out rollout actions through the same paths an
// operator uses: paused partitions and rewind requests in the checkpoints
// store (executed by whichever daemon owns each partition), backfill
// requests for the capture role, and the local sink's slice.
type daemonActions struct{ d *daemon }

var _ rollout.Actions = (*daemonActions)(nil)

func (a *daemonActions) ApplySlice(_ context.Context, s rollout.Slice) error {
	if a.d.sink != nil {
		a.d.sink.SetSlice(func(ns string, key []byte) bool { return s.Contains(ns, key) })
	}
	return nil
}

func (a *daemonActions) Backfill(ctx context.Context, nss []string, reason string) ([]string, error) {
	var ids []string
	for _, ns := range nss {
		id, err := capture.Enqueue(ctx, a.d.store, capture.Request{Namespace: ns, Reason: reason, Actor: rollout.AutoActor})
		if err != nil {
			return ids, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Divergent reads, per namespace of the slice, the newest round's summary:
// the documents behind its divergent rows, and whether it listed them all.
func (a *daemonActions) Divergent(ctx context.Context, s rollout.Slice) ([]rollout.DivergentKeys, error) {
	var out []rollout.DivergentKeys
	for _, ns := range s.Namespaces() {
		sum, ok, err := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, a.d.store, checkpoints.KeyReconcileLatest+ns)
		if err != nil {
			return out, err
		}
		d := rollout.DivergentKeys{Namespace: ns}
		if ok {
			// A round without divergence lists all of its (no) documents.
			d.Round, d.Keys, d.Complete = sum.ID, sum.IDs, sum.IDsComplete || sum.Divergent == 0
		}
		out = append(out, d)
	}
	return out, nil
}

// Reemit queues a targeted backfill of keys for the capture role.
func (a *daemonActions) Reemit(ctx context.Context, ns string, keys [][]byte, reason string) (string, error) {
	return capture.Enqueue(ctx, a.d.store, capture.Request{Namespace: ns, Keys: keys, Reason: reason, Actor: rollout.AutoActor})
}

// Ends lists the partitions' end offsets (high watermarks).
func (a *daemonActions) Ends(ctx context.Context, tps []sink.TopicPartition) ([]rollout.Offset, error) {
	names := topicsOf(tps)
	if len(names) == 0 {
		return nil, nil
	}
	ends, err := a.d.adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return nil, err
	}
	out := make([]rollout.Offset, 0, len(tps))
	for _, tp := range tps {
		end, ok := ends.Lookup(tp.Topic, tp.Partition)
		if !ok || end.Err != nil {
			return nil, fmt.Errorf("no end offset for %s/%d", tp.Topic, tp.Partition)
		}
		out = append(out, rollout.Offset{Topic: tp.Topic, Partition: tp.Partition, Offset: end.Offset})
	}
	return out, nil
}

// Passed compares the sink group's committed offsets with ends. A
// transactional topic ends with a commit marker the sink never commits past,
// so one short of an end passes it.
func (a *daemonActions) Passed(ctx context.Context, ends []rollout.Offset) (bool, error) {
	if len(ends) == 0 {
		return true, nil
	}
	committed, err := a.d.adm.FetchOffsets(ctx, a.d.cfg.Sink.Group)
	if err != nil {
		return false, err
	}
	for _, e := range ends {
		if e.Offset == 0 {
			continue
		}
		c, ok := committed.Lookup(e.Topic, e.Partition)
		if !ok || c.At < e.Offset-1 {
			return false, nil
		}
	}
	return true, nil
}

func topicsOf(tps []sink.TopicPartition) []string {
	seen := map[string]bool{}
	var names []string
	for _, tp := range tps {
		if !seen[tp.Topic] {
			seen[tp.Topic] = true
			names = append(names, tp.Topic)
		}
	}
	return names
}

func (a *daemonActions) Requests(ctx context.Context, ids []string) (int, error) {
	n := 0
	for _, id := range ids {
		_, err := a.d.store.Get(ctx, id)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, checkpoints.ErrNotFound):
			return n, err
		}
	}
	return n, nil
}

func (a *daemonActions) Partitions(ctx context.Context, s rollout.Slice) ([]sink.TopicPartition, error) {
	var out []sink.TopicPartition
	for _, ns := range s.Namespaces() {
		tps, err := a.d.partitions(ctx, envelope.Topic(a.d.cfg.Sink.TopicPrefix, ns), nil)
		if err != nil {
			return nil, err
		}
		out = append(out, tps...)
	}
	return out, nil
}

func (a *daemonActions) Pause(ctx context.Context, tps []sink.TopicPartition, reason string) ([]sink.TopicPartition, error) {
	before, _, err := checkpoints.GetJSON[[]sink.TopicPartition](ctx, a.d.store, sink.PausedKey)
	if err != nil {
		return nil, err
	}
	was := map[sink.TopicPartition]bool{}
	for _, tp := range before {
		was[tp] = true
	}
	if _, err := sink.Pause(ctx, a.d.store, tps, true); err != nil {
		return nil, err
	}
	var newly []sink.TopicPartition
	for _, tp := range tps {
		if !was[tp] {
			newly = append(newly, tp)
		}
	}
	return newly, nil
}

func (a *daemonActions) Resume(ctx context.Context, tps []sink.TopicPartition, reason string) error {
	if len(tps) == 0 {
		return nil
	}
	_, err := sink.Pause(ctx, a.d.store, tps, false)
	return err
}

// Paused checks the stored intent and, for partitions this daemon's sink
// owns, that the consumer applied it.
func (a *daemonActions) Paused(ctx context.Context, tps []sink.TopicPartition) (bool, error) {
	cur, _, err := checkpoints.GetJSON[[]sink.TopicPartition](ctx, a.d.store, sink.PausedKey)
	if err != nil {
		return false, err
	}
	stored := map[sink.TopicPartition]bool{}
	for _, tp := range cur {
		stored[tp] = true
	}
	local := map[sink.TopicPartition]bool{}
	if a.d.sink != nil {
		for _, l := range a.d.sink.Lag() {
			local[sink.TopicPartition{Topic: l.Topic, Partition: l.Partition}] = l.Paused
		}
	}
	for _, tp := range tps {
		if !stored[tp] {
			return false, nil
		}
		if p, owned := local[tp]; owned && !p {
			return false, nil
		}
	}
	return true, nil
}

// Rewind plans a rewind of each topic to its partitions' latest verified
// marks through the operator's rewind path (same gc_grace guard), queues it
// for the partitions' owners and waits until all of them moved.
func (a *daemonActions) Rewind(ctx context.Context, tps []sink.TopicPartition, reason string) (map[string]any, error) {
	byTopic := map[string][]int32{}
	for _, tp := range tps {
		byTopic[tp.Topic] = append(byTopic[tp.Topic], tp.Partition)
	}
	out := map[string]any{}
	for topic, parts := range byTopic {
		plan, err := a.d.planRewind(ctx, RewindRequest{Topic: topic, Partitions: parts, ToMark: "latest", Execute: true, Reason: reason})
		if err != nil {
			return out, fmt.Errorf("rewind %s: %w", topic, err)
		}
		rr := sink.RewindRequest{ID: plan.ID, Targets: map[string]map[int32]int64{topic: {}}, Actor: rollout.AutoActor, Reason: reason}
		for _, p := range plan.Partitions {
			rr.Targets[topic][p.Partition] = p.Target
		}
		key := sink.RewindKeyPrefix + plan.ID
		if err := checkpoints.PutJSON(ctx, a.d.store, key, rr); err != nil {
			return out, err
		}
		if err := waitRewound(ctx, a.d.store, key, 60*time.Second); err != nil {
			return out, err
		}
		out[topic] = map[string]any{"id": plan.ID, "records_to_replay": plan.Replay, "partitions": plan.Partitions}
	}
	return out, nil
}

func waitRewound(ctx context.Context, st checkpoints.Store, key string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		cur, _, err := checkpoints.GetJSON[sink.RewindRequest](ctx, st, key)
		if err == nil && cur.Remaining() == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rewind queued at %s but not every partition owner executed it within %s; is a sink running?", key, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// CaughtUp compares the group's committed offsets with the partitions' ends.
// A transactional topic ends with a commit marker, so one record behind is
// caught up.
func (a *daemonActions) CaughtUp(ctx context.Context, tps []sink.TopicPartition) (bool, error) {
	topics := map[string]bool{}
	for _, tp := range tps {
		topics[tp.Topic] = true
	}
	var names []string
	for t := range topics {
		names = append(names, t)
	}
	committed, err := a.d.adm.FetchOffsets(ctx, a.d.cfg.Sink.Group)
	if err != nil {
		return false, err
	}
	ends, err := a.d.adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return false, err
	}
	for _, tp := range tps {
		end, ok := ends.Lookup(tp.Topic, tp.Partition)
		if !ok {
			return false, fmt.Errorf("no end offset for %s/%d", tp.Topic, tp.Partition)
		}
		c, ok := committed.Lookup(tp.Topic, tp.Partition)
		if end.Offset == 0 {
			continue
		}
		if !ok || end.Offset-c.At > 1 {
			return false, nil
		}
	}
	return true, nil
}

// planAPI serves the plan and route endpoints.
type planAPI struct{ e *rollout.Engine }

func (h *planAPI) status(w http.ResponseWriter, r *http.Request) {
	admin.WriteJSON(w, 200, h.e.Status())
}

func (h *planAPI) routes(w http.ResponseWriter, r *http.Request) {
	admin.WriteJSON(w, 200, h.e.Routes())
}

// RouteAnswer is GET /v1/route.
type RouteAnswer struct {
	Collection string       `json:"collection"`
	ID         string       `json:"id"`
	Route      rollout.Mode `json:"route"`
	Bucket     int          `json:"bucket"`
	Stage      string       `json:"stage"`
	Generation int64        `json:"generation"`
}

func (h *planAPI) route(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ns, id := q.Get("collection"), q.Get("id")
	if ns == "" || id == "" {
		admin.WriteError(w, 400, errors.New(`collection (db.collection) and id are required; id is an extended JSON value: 42, "abc", {"$oid":"..."}`))
		return
	}
	key, err := parseIDKey(id)
	if err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	rt := h.e.Routes()
	admin.WriteJSON(w, 200, RouteAnswer{Collection: ns, ID: id, Route: rt.Route(ns, key), Bucket: rollout.Bucket(key),
		Stage: rt.Stage, Generation: rt.Generation})
}

// parseIDKey reads an _id in extended JSON (42, "abc", {"$oid": "..."}) and
// returns its envelope key; a bare word that is not JSON is taken as a string.
func parseIDKey(s string) ([]byte, error) {
	var d bson.D
	if err := bson.UnmarshalExtJSON([]byte(`{"v":`+s+`}`), false, &d); err != nil {
		if strings.ContainsAny(s, `{}[]"`) {
			return nil, fmt.Errorf("id %s: %w", s, err)
		}
		d = bson.D{{Key: "v", Value: s}}
	}
	raw, err := bson.Marshal(d)
	if err != nil {
		return nil, err
	}
	return envelope.Key(bson.Raw(raw).Lookup("v")), nil
}

// PlanRequest is the body of POST /v1/plan/*.
type PlanRequest struct {
	Reason  string `json:"reason"`
	Force   bool   `json:"force,omitempty"`
	Hard    bool   `json:"hard,omitempty"`
	Trigger string `json:"trigger,omitempty"`
}

func (h *planAPI) read(w http.ResponseWriter, r *http.Request) (PlanRequest, bool) {
	var req PlanRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return req, false
	}
	return req, true
}

func planError(w http.ResponseWriter, err error) {
	code := 500
	switch {
	case errors.Is(err, rollout.ErrRefused):
		code = http.StatusConflict
	case errors.Is(err, rollout.ErrUnknownTrigger):
		code = http.StatusNotFound
	}
	admin.WriteError(w, code, err)
}

func (h *planAPI) answer(w http.ResponseWriter, st rollout.Status, err error) {
	if err != nil {
		planError(w, err)
		return
	}
	admin.WriteJSON(w, 200, st)
}

func (h *planAPI) advance(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Advance(r.Context(), admin.Actor(r.Context()), req.Reason, req.Force)
		h.answer(w, st, err)
	}
}

func (h *planAPI) abort(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Abort(r.Context(), admin.Actor(r.Context()), req.Reason)
		h.answer(w, st, err)
	}
}

func (h *planAPI) rollback(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Rollback(r.Context(), admin.Actor(r.Context()), req.Reason, req.Hard)
		h.answer(w, st, err)
	}
}

func (h *planAPI) resume(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Resume(r.Context(), admin.Actor(r.Context()), req.Reason)
		h.answer(w, st, err)
	}
}

func (h *planAPI) drill(w http.ResponseWriter, r *http.Request) {
	req, ok := h.read(w, r)
	if !ok {
		return
	}
	if req.Trigger == "" {
		admin.WriteError(w, 400, errors.New("trigger is required (see `tidemark plan status` for the current stage's triggers)"))
		return
	}
	// A drill outlives a dropped connection: stopping it halfway would leave
	// the action in place without its restore.
	rep, err := h.e.Drill(context.WithoutCancel(r.Context()), admin.Actor(r.Context()), req.Reason, req.Trigger)
	if err != nil && rep.ID == "" {
		planError(w, err)
		return
	}
	// A failed drill is a finding, not a failed request: the report says
	// which step failed, and the engine audited it.
	admin.WriteJSON(w, 200, rep)
}

const planUsage = `tidemark plan <subcommand> [flags]

Show or steer the rollout plan of a running daemon (the rollout: section of
its config) through the admin API.

Subcommands:
  status                       stage, slice, each gate (pass/fail/pending with value,
                               threshold and how long it held) and each trigger
                               (attempts, cool-down)
  advance --reason TEXT        move to the next stage; refused unless every gate
          [--force]            passes (--force overrides, and is audited as forced)
  abort --reason TEXT          stop automation and route every read to legacy;
                               the sink keeps writing the slice
  rollback --reason TEXT       route the slice's reads back to legacy (soft);
           [--hard]            --hard also narrows to the previous stage and marks
                               this one reverted
  resume --reason TEXT         a person's all-clear: lift a hold, abort or soft
                               rollback, release partitions the rollout paused,
                               give triggers their attempts back
  drill --trigger NAME         rehearse a trigger of the current stage end to end:
        --reason TEXT          fire it, verify its effect, restore, audit the report

Every change needs --reason and a token (--token-file or TIDEMARK_TOKEN); it is
written to the audit log under your token's name.

Examples:
  tidemark plan status
  tidemark plan advance --reason "canary clean for 24h, CHG-1234"
  tidemark plan drill --trigger lag-halt --reason "monthly rollback drill"
  tidemark plan rollback --reason "p99 regression on the read path"`

func planCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stdout, planUsage)
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	usage := map[string]string{
		"status":   "plan status [--json]",
		"advance":  "plan advance --reason TEXT [--force]",
		"abort":    "plan abort --reason TEXT",
		"rollback": "plan rollback --reason TEXT [--hard]",
		"resume":   "plan resume --reason TEXT",
		"drill":    "plan drill --trigger NAME --reason TEXT",
	}[sub]
	if usage == "" {
		return &exitError{code: 2, err: fmt.Errorf("unknown subcommand %q\n\n%s", sub, planUsage)}
	}
	cf := newClientFlags("plan "+sub, usage, stderr)
	var reason, trigger *string
	var force, hard *bool
	if sub != "status" {
		reason = cf.fs.String("reason", "", "why, for the audit log (required)")
	}
	switch sub {
	case "advance":
		force = cf.fs.Bool("force", false, "advance even though a gate does not pass (audited as forced)")
	case "rollback":
		hard = cf.fs.Bool("hard", false, "also narrow the slice to the previous stage and mark this stage reverted")
	case "drill":
		trigger = cf.fs.String("trigger", "", "trigger of the current stage to rehearse (required)")
	}
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	if sub == "status" {
		var st rollout.Status
		if err := cl.Do(ctx, "GET", "/v1/plan", nil, &st); err != nil {
			return err
		}
		if *cf.json {
			return printJSON(stdout, st)
		}
		printPlan(stdout, st)
		return nil
	}
	if strings.TrimSpace(*reason) == "" {
		return &exitError{code: 2, err: errors.New("--reason is required")}
	}
	req := PlanRequest{Reason: *reason}
	if force != nil {
		req.Force = *force
	}
	if hard != nil {
		req.Hard = *hard
	}
	if sub == "drill" {
		if *trigger == "" {
			return &exitError{code: 2, err: errors.New("--trigger is required; `tidemark plan status` lists the current stage's triggers")}
		}
		req.Trigger = *trigger
		// A drill waits for effects such as a replay; give it time.
		cl.HTTP.Timeout = 15 * time.Minute
		var rep rollout.DrillReport
		if err := cl.Do(ctx, "POST", "/v1/plan/drill", req, &rep); err != nil {
			return err
		}
		if *cf.json {
			return printJSON(stdout, rep)
		}
		printDrill(stdout, rep)
		if rep.Result != rollout.Pass {
			return &exitError{code: 1, err: fmt.Errorf("drill %s failed; the report is in the audit log (tidemark audit --action drill)", rep.ID)}
		}
		return nil
	}
	var st rollout.Status
	if err := cl.Do(ctx, "POST", "/v1/plan/"+sub, req, &st); err != nil {
		return err
	}
	if *cf.json {
		return printJSON(stdout, st)
	}
	printPlan(stdout, st)
	return nil
}

func printPlan(w io.Writer, st rollout.Status) {
	mode := ""
	if st.DryRun {
		mode = " (dry run: automatic actions are only audited)"
	}
	fmt.Fprintf(w, "plan %s%s\nstage %d/%d %s since %s (advance: %s, reads in slice: %s)\n", st.PlanVersion, mode,
		st.Stage+1, len(st.Stages), st.StageName, st.StageSince.Format(time.RFC3339), st.Advance, st.Reads)
	var ns []string
	for k, v := range st.Slice {
		ns = append(ns, fmt.Sprintf("%s %v", k, v))
	}
	sort.Strings(ns)
	fmt.Fprintf(w, "slice: %s\n", strings.Join(ns, ", "))
	for _, flag := range []struct {
		on  bool
		msg string
	}{{st.Aborted, "ABORTED: every read routes to legacy; `tidemark plan resume` to continue"},
		{st.SoftRollback, "SOFT ROLLBACK: the slice's reads route to legacy"},
		{st.Held != "", "HELD: " + st.Held},
		{len(st.Reverted) > 0, "reverted stages: " + strings.Join(st.Reverted, ", ")},
		{len(st.Paused) > 0, fmt.Sprintf("paused by the rollout: %v", st.Paused)},
		{st.Complete, "the last stage's gates pass: the plan is complete"},
		{st.LastError != "", "last evaluation error: " + st.LastError}} {
		if flag.on {
			fmt.Fprintln(w, flag.msg)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nGATE\tSIGNAL\tSTATE\tVALUE\tTHRESHOLD\tHELD\tWINDOW")
	for _, g := range st.Gates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s (%s)\t%s\n", g.Name, g.Signal, g.State, value(g.Value), g.Threshold,
			secs(g.HeldFor), g.Observed, secs(g.Window))
	}
	fmt.Fprintln(tw, "\nTRIGGER\tSIGNAL\tACTION\tVALUE\tCONDITION\tHELD\tFOR\tATTEMPTS\tCOOL-DOWN LEFT")
	for _, t := range st.Triggers {
		att := fmt.Sprintf("%d/%d", t.Attempts, t.MaxAttempts)
		if t.Exhausted {
			att += " exhausted"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Signal, t.Action, value(t.Value), t.Condition,
			secs(t.HeldFor), secs(t.For), att, secs(t.CooldownLeft))
	}
	tw.Flush()
	// Where each trigger's last firing stands: the evidence it acted on,
	// whether it waits (pending) and for what, and what judged it.
	for _, t := range st.Triggers {
		switch {
		case t.Pending:
			fmt.Fprintf(w, "%s: PENDING, fired on %s; %s\n", t.Name, t.FiredOn, t.Effect)
		case t.FiredOn != "":
			fmt.Fprintf(w, "%s: fired on %s; judged by %s\n", t.Name, t.FiredOn, t.Judged)
		}
	}
	if wd := st.Widening; wd != nil {
		if wd.Phase == rollout.PhaseApplied {
			fmt.Fprintf(w, "widened slice back-filled at %s; rounds that started before say nothing about this stage\n",
				wd.AppliedAt.Format(time.RFC3339))
		} else {
			fmt.Fprintf(w, "widened slice back-filling (%s: %s); the clean gate waits for it\n", wd.Phase, wd.Waiting)
		}
	}
}

func printDrill(w io.Writer, rep rollout.DrillReport) {
	fmt.Fprintf(w, "drill %s of trigger %s (%s) at stage %s: %s\n", rep.ID, rep.Trigger, rep.Action, rep.Stage, strings.ToUpper(rep.Result))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tOK\tSECONDS\tDETAIL")
	for _, s := range rep.Steps {
		fmt.Fprintf(tw, "%s\t%v\t%.1f\t%s\n", s.Step, s.OK, s.Seconds, s.Detail)
	}
	tw.Flush()
}

func value(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.4g", *v)
}

func secs(s float64) string { return (time.Duration(s) * time.Second).String() }
