package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/config"
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

func openReconcileConns(ctx context.Context, cfg *config.Config, cass *gocql.Session, mc *mongo.Client) (*reconcileConns, error) {
	c := &reconcileConns{cass: cass, mongo: mc}
	if c.cass == nil {
		cl, err := cfg.CassandraCluster()
		if err != nil {
			return nil, err
		}
		if c.cass, err = cl.CreateSession(); err != nil {
			return nil, fmt.Errorf("cannot reach Cassandra at %v: %w", cfg.Cassandra.Hosts, err)
		}
		c.closers = append(c.closers, c.cass.Close)
	}
	if c.mongo == nil {
		mo, err := cfg.MongoOptions()
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

func newReconciler(cfg *config.Config, d reconcile.Deps, adm *kadm.Client, applied func(string, int32) envelope.Version) (*reconcile.Reconciler, error) {
	d.Lag = &reconcile.PipelineLag{Store: d.Store, Admin: adm, Mongo: d.Mongo, Group: cfg.Reconcile.SinkGroup,
		TopicPrefix: cfg.Capture.TopicPrefix, Applied: applied, Settle: cfg.Reconcile.Settle, OplogReads: cfg.Reconcile.OplogReads}
	return reconcile.New(cfg.Reconcile, d)
}

// startReconcile adds the report routes, on-demand rounds and the schedule.
func (d *daemon) startReconcile(ctx context.Context, srv *admin.Server, g *errgroup.Group) error {
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
		Logger: d.log, Registerer: d.reg, Slice: rolloutSlice(d.cfg, d.store), Name: reconcilerName(d.cfg)}, d.adm, applied)
	if err != nil {
		return err
	}
	if d.cfg.Reconcile.Segments > 1 {
		// Rounds split into segments are hashed by every daemon's Worker,
		// whichever daemon coordinates them (docs/reconcile.md).
		w := reconcile.NewWorker(rec)
		g.Go(func() error { return w.Run(ctx) })
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

// reconcilerName names this daemon in round leases, segment reports and
// audit entries: its host and admin address, which an operator can reach,
// plus a random suffix so that a restarted daemon is not taken for the one
// that died.
func reconcilerName(cfg *config.Config) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%s/%04x", host, cfg.Admin.Listen, rand.Uint32()&0xffff)
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

func (h *reconcileHandlers) progress(w http.ResponseWriter, r *http.Request) {
	p, ok := h.rec.Current()
	st := RoundStatus{Running: ok}
	if ok {
		st.Progress = &p
	}
	admin.WriteJSON(w, 200, st)
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

func (h *reconcileHandlers) repair(w http.ResponseWriter, r *http.Request) {
	var req RepairRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	res, err := Repair(r.Context(), h.rec, req, admin.Actor(r.Context()))
	if err != nil {
		admin.WriteError(w, StatusOf(err), err)
		return
	}
	admin.WriteJSON(w, 200, res)
}

// Repair carries out a repair request: a report's divergent keys, _ids or
// keys of a namespace. Its errors are of the kinds StatusOf maps.
func Repair(ctx context.Context, rec *reconcile.Reconciler, req RepairRequest, actor string) (*reconcile.RepairResult, error) {
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

// Local is a reconciler of the CLI's own (`tidemark reconcile` and `tidemark
// repair` without --remote): connected to the servers of the config, reading
// and writing the daemon's checkpoint store.
type Local struct {
	*reconcile.Reconciler
	// Namespaces are the spec's, in its order.
	Namespaces []string
}

// OpenLocal connects a reconciler to the servers of cfg; done closes it.
func OpenLocal(ctx context.Context, cfg *config.Config) (*Local, func(), error) {
	if cfg.Spec == "" {
		return nil, nil, errors.New("the config names no spec: reconcile compares against the spec's transform")
	}
	m, err := transform.Load(cfg.Spec)
	if err != nil {
		return nil, nil, err
	}
	// The store the daemon uses, whatever its kind: a round run here reads
	// the same checkpoints (and its slice) as the daemon's rounds.
	store, err := cfg.OpenCheckpoints(ctx, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return nil, nil, err
	}
	conns, err := openReconcileConns(ctx, cfg, nil, nil)
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	kopts, err := cfg.KafkaOpts()
	var kcl *kgo.Client
	if err == nil {
		kcl, err = kgo.NewClient(kopts...)
	}
	if err != nil {
		conns.close()
		store.Close()
		return nil, nil, err
	}
	done := func() { kcl.Close(); conns.close(); store.Close() }
	rec, err := newReconciler(cfg, reconcile.Deps{Mongo: conns.mongo, Cassandra: conns.cass, Mapping: m, Store: store,
		Logger: config.NewLogger(cfg.Log), Slice: rolloutSlice(cfg, store)}, kadm.NewClient(kcl), nil)
	if err != nil {
		done()
		return nil, nil, err
	}
	return &Local{Reconciler: rec, Namespaces: m.Namespaces()}, done, nil
}

// rolloutSlice gives a round the rollout plan's current slice when the config
// has a plan: the sink writes only those keys, so only they are expected.
// Without a plan (or before its first evaluation) every document is.
func rolloutSlice(cfg *config.Config, store checkpoints.Store) func(context.Context) (func(string, []byte) bool, string, error) {
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
