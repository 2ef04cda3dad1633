// Package daemon is `tidemark run`: it composes capture, the sink, the
// reconciler, the rollout engine, the election, the audit chain and the
// admin API from one configuration, and serves the admin API's routes.
// api.go holds the API's request and answer types, for clients.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/leader"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/statuspage"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/tidemarkhq/tidemark/validate"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

// daemon holds what the admin handlers need.
type daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	store   checkpoints.Store
	mapping *transform.Mapping
	sink    *sink.Sink
	cass    *gocql.Session
	adm     *kadm.Client
	mongo   *mongo.Client
	capture *capture.Capture
	reg     *prometheus.Registry
	ready   chan struct{}
	// elector is nil unless election.enabled: then only the leader runs
	// scheduled rounds and evaluates the rollout plan.
	elector *leader.Elector
	// lagHistory is the sink's lag over the last hour, for the status
	// page's chart; nil without the sink role.
	lagHistory *sink.LagHistory
}

// Run runs the roles and parts cfg names until ctx ends or one of them
// fails. Everything the daemon runs is started here, in order: the store,
// the admin server, Kafka, the spec, the sink and capture (built, not yet
// running), the core routes, the election, the audit chain's verifier,
// reconcile, rollout, the status page, trace; then the roles; then the
// admin API listens. A *SetupError is a problem of the config or the spec
// that a restart does not mend.
func Run(ctx context.Context, cfg *config.Config) error {
	log := config.NewLogger(cfg.Log)
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	d := &daemon{cfg: cfg, log: log, ready: make(chan struct{})}
	reg := prometheus.NewRegistry()
	d.reg = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if d.store, err = cfg.OpenCheckpoints(ctx, log, reg); err != nil {
		return err
	}
	defer d.store.Close()
	srv, err := newAdminServer(cfg, d.store, log, reg)
	if err != nil {
		return &SetupError{Err: err}
	}

	kopts, err := cfg.KafkaOpts()
	if err != nil {
		return err
	}
	kcl, err := kgo.NewClient(kopts...)
	if err != nil {
		return err
	}
	defer kcl.Close()
	d.adm = kadm.NewClient(kcl)

	g, gctx := errgroup.WithContext(ctx)
	if cfg.Spec != "" {
		if d.mapping, err = transform.Load(cfg.Spec); err != nil {
			return &SetupError{Err: err}
		}
	}
	var roles []func() error
	if cfg.HasRole("sink") {
		closeSink, err := d.buildSink(ctx, kopts)
		if closeSink != nil {
			defer closeSink()
		}
		if err != nil {
			return err
		}
		roles = append(roles, func() error { return d.sink.Run(gctx) }, func() error { return d.lagHistory.Run(gctx, d.sink.Lag) })
	}
	if cfg.HasRole("capture") {
		closeCapture, err := d.buildCapture(ctx, kopts)
		if closeCapture != nil {
			defer closeCapture()
		}
		if err != nil {
			return err
		}
		roles = append(roles, func() error { return d.capture.Run(gctx) })
	}

	d.routes(srv, reg)
	if cfg.Election.Enabled {
		d.elector = leader.New(cfg.Election, leader.Deps{KafkaOpts: kopts, TakeOffice: d.takeOffice, Logger: log, Registerer: reg})
		g.Go(func() error { return d.elector.Run(gctx) })
		g.Go(func() error { d.recordLeadership(gctx); return nil })
	}
	if err := d.startParts(gctx, srv, g); err != nil {
		return err
	}
	// The roles start only now: rollout sets the sink's slice, and a sink
	// started before it would write keys outside the slice.
	for _, run := range roles {
		g.Go(run)
	}
	base, err := d.serve(gctx, g, srv)
	if err != nil {
		return err
	}
	close(d.ready)
	log.Info("tidemark running", "roles", cfg.Roles, "admin", base, "metrics", base+"/metrics")
	d.store.Append(ctx, checkpoints.AuditEntry{Actor: "auto:daemon", Action: "daemon.start", Result: "ok",
		Details: map[string]any{"roles": cfg.Roles, "spec_version": specVersion(d.mapping)}})
	err = g.Wait()
	d.store.Append(context.Background(), checkpoints.AuditEntry{Actor: "auto:daemon", Action: "daemon.stop", Result: resultOf(err)})
	return err
}

// startParts starts what runs beside the roles, each registering its routes
// on srv and its long-running work on g: the audit chain's verifier,
// reconcile, rollout, the status page and trace.
func (d *daemon) startParts(ctx context.Context, srv *admin.Server, g *errgroup.Group) error {
	d.startAuditChain(ctx, g)
	if err := d.startReconcile(ctx, srv, g); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if err := d.startRollout(ctx, srv, g); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	d.startStatusPage(srv)
	d.startTrace(ctx, srv)
	return nil
}

// buildSink connects to Cassandra, checks the spec against its tables and
// builds the sink and its lag history. close releases what was built, also
// after a failure.
func (d *daemon) buildSink(ctx context.Context, kopts []kgo.Opt) (close func(), err error) {
	var closers []func()
	close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	cl, err := d.cfg.CassandraCluster()
	if err != nil {
		return close, err
	}
	if d.cass, err = cl.CreateSession(); err != nil {
		return close, fmt.Errorf("cannot reach Cassandra at %v: %w", d.cfg.Cassandra.Hosts, err)
	}
	closers = append(closers, d.cass.Close)
	if err := checkTarget(ctx, d.cass, d.mapping); err != nil {
		return close, err
	}
	w, err := sink.NewCassandraWriter(ctx, d.cass, d.mapping, d.cfg.Sink.Consistency)
	if err != nil {
		return close, err
	}
	// franz-go's own client metrics (fetches, request latency, buffered
	// records, broker connections) for the one long-lived consumer.
	kmet := kprom.NewMetrics("tidemark_kafka", kprom.Registerer(d.reg), kprom.Subsystem("sink"))
	if d.sink, err = sink.New(d.cfg.Sink, sink.Deps{KafkaOpts: append(kopts[:len(kopts):len(kopts)], kgo.WithHooks(kmet)), Writer: w,
		Mapping: d.mapping, Store: d.store, Logger: d.log, Registerer: d.reg}); err != nil {
		return close, err
	}
	closers = append(closers, func() { d.sink.Close() })
	d.lagHistory, err = sink.NewLagHistory(sink.DefaultHistoryEvery, sink.DefaultHistoryWindow, sink.DefaultHistoryMaxPartitions)
	return close, err
}

// buildCapture connects to MongoDB and builds capture.
func (d *daemon) buildCapture(ctx context.Context, kopts []kgo.Opt) (close func(), err error) {
	mo, err := d.cfg.MongoOptions()
	if err != nil {
		return nil, err
	}
	mc, err := mongo.Connect(ctx, mo)
	if err != nil {
		return nil, fmt.Errorf("cannot reach MongoDB: %w", err)
	}
	d.mongo = mc
	disconnect := func() { mc.Disconnect(context.Background()) }
	cp, err := capture.New(d.cfg.Capture, capture.Deps{Mongo: mc, KafkaOpts: kopts, Store: d.store, Logger: d.log, Registerer: d.reg})
	if err != nil {
		return disconnect, err
	}
	d.capture = cp
	return func() { cp.Close(); disconnect() }, nil
}

// serve listens on admin.listen and serves srv until ctx ends; it returns
// the API's base URL.
func (d *daemon) serve(ctx context.Context, g *errgroup.Group, srv *admin.Server) (string, error) {
	cfg := d.cfg.Admin
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("admin listen %s: %w", cfg.Listen, err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		var err error
		if cfg.TLSCert != "" {
			err = hs.ServeTLS(ln, cfg.TLSCert, cfg.TLSKey)
		} else {
			err = hs.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	if cfg.TLSCert != "" {
		return "https://" + ln.Addr().String(), nil
	}
	return "http://" + ln.Addr().String(), nil
}

// startAuditChain verifies the chain periodically, so the broken-links
// metric moves even when nobody reads the log.
func (d *daemon) startAuditChain(ctx context.Context, g *errgroup.Group) {
	ch, ok := d.store.(*checkpoints.Chained)
	if !ok {
		return
	}
	every := d.cfg.Audit.VerifyInterval
	if every <= 0 {
		every = time.Minute
	}
	g.Go(func() error { return ch.Run(ctx, every) })
}

// startStatusPage serves the status page at GET / and GET /ui/. It only reads:
// the page polls the same read routes the CLI uses, with the caller's token.
func (d *daemon) startStatusPage(srv *admin.Server) {
	// The page's HTML, CSS and JS hold no data, and a browser cannot send a
	// bearer token for a page it has not loaded yet: behind the token check,
	// the page's own token field could never be reached.
	h := statuspage.Handler()
	for _, p := range statuspage.Patterns {
		srv.HandlePublic(p, h)
	}
}

// checkTarget refuses to start a sink whose spec the live Cassandra schema
// does not match (it would stop or dead-letter on its first write) or that
// would write a column a replay changes (a non-frozen list, a counter): every
// restart, rewind and repair replays records, so such a column would drift
// on the first one.
func checkTarget(ctx context.Context, s *gocql.Session, m *transform.Mapping) error {
	if m == nil {
		return nil
	}
	ps, err := validate.TargetProblems(ctx, s, m)
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return nil
	}
	lines := make([]string, len(ps))
	for i, p := range ps {
		at := p.Table
		if p.Column != "" {
			at += "." + p.Column
		}
		lines[i] = fmt.Sprintf("%s: %s: %s", at, p.Kind, p.Message)
	}
	return &SetupError{Err: fmt.Errorf("sink: the spec does not fit the target tables (%d problems; `tidemark validate` shows them, "+
		"docs/types.md explains unsafe_type):\n  %s", len(ps), strings.Join(lines, "\n  "))}
}

func specVersion(m *transform.Mapping) string {
	if m == nil {
		return ""
	}
	return m.Version() + "/" + m.Checksum()[:12]
}

func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	return "failed: " + err.Error()
}
