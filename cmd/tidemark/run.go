package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/leader"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/tidemarkhq/tidemark/validate"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

func init() {
	register(&command{Name: "run", Short: "run the daemon (capture and/or sink roles, admin API, metrics)", Run: runDaemon})
}

// daemon holds what the admin handlers need.
type daemon struct {
	cfg     *Config
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

// daemonPart is a component another file of this command adds through init
// (reconcile, rollout, the status page), so that each lives beside its own code
// rather than in runDaemon. start runs after the core roles are built and before
// the admin API listens; it registers its routes on srv and its long-running work
// on g, which stops with ctx.
type daemonPart struct {
	name  string
	start func(ctx context.Context, d *daemon, srv *admin.Server, g *errgroup.Group) error
}

var daemonParts []daemonPart

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
	cfg, err := loadConfig(*path)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	log := newLogger(cfg.Log)
	for _, w := range cfg.warnings() {
		log.Warn(w)
	}
	d := &daemon{cfg: cfg, log: log, ready: make(chan struct{})}
	reg := prometheus.NewRegistry()
	d.reg = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if d.store, err = cfg.openCheckpoints(ctx, log, reg); err != nil {
		return err
	}
	defer d.store.Close()
	srv, err := newAdminServer(cfg, d.store, log, reg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}

	kopts, err := cfg.kafkaOpts()
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
	var roles []func() error
	if cfg.Spec != "" {
		if d.mapping, err = transform.Load(cfg.Spec); err != nil {
			return &exitError{code: 2, err: err}
		}
	}
	if cfg.hasRole("sink") {
		cl, err := cfg.cassandraCluster()
		if err != nil {
			return err
		}
		if d.cass, err = cl.CreateSession(); err != nil {
			return fmt.Errorf("cannot reach Cassandra at %v: %w", cfg.Cassandra.Hosts, err)
		}
		defer d.cass.Close()
		if err := checkTarget(ctx, d.cass, d.mapping); err != nil {
			return err
		}
		w, err := sink.NewCassandraWriter(ctx, d.cass, d.mapping, cfg.Sink.Consistency)
		if err != nil {
			return err
		}
		// franz-go's own client metrics (fetches, request latency, buffered
		// records, broker connections) for the one long-lived consumer.
		kmet := kprom.NewMetrics("tidemark_kafka", kprom.Registerer(reg), kprom.Subsystem("sink"))
		if d.sink, err = sink.New(cfg.Sink, sink.Deps{KafkaOpts: append(kopts[:len(kopts):len(kopts)], kgo.WithHooks(kmet)), Writer: w, Mapping: d.mapping, Store: d.store,
			Logger: log, Registerer: reg}); err != nil {
			return err
		}
		defer d.sink.Close()
		roles = append(roles, func() error { return d.sink.Run(gctx) })
		if d.lagHistory, err = sink.NewLagHistory(sink.DefaultHistoryEvery, sink.DefaultHistoryWindow, sink.DefaultHistoryMaxPartitions); err != nil {
			return err
		}
		roles = append(roles, func() error { return d.lagHistory.Run(gctx, d.sink.Lag) })
	}
	if cfg.hasRole("capture") {
		mo, err := cfg.mongoOptions()
		if err != nil {
			return err
		}
		mc, err := mongo.Connect(ctx, mo)
		if err != nil {
			return fmt.Errorf("cannot reach MongoDB: %w", err)
		}
		defer mc.Disconnect(context.Background())
		d.mongo = mc
		cp, err := capture.New(cfg.Capture, capture.Deps{Mongo: mc, KafkaOpts: kopts, Store: d.store, Logger: log, Registerer: reg})
		if err != nil {
			return err
		}
		defer cp.Close()
		d.capture = cp
		roles = append(roles, func() error { return cp.Run(gctx) })
	}

	d.routes(srv, reg)
	if cfg.Election.Enabled {
		d.elector = leader.New(cfg.Election, leader.Deps{KafkaOpts: kopts, TakeOffice: d.takeOffice, Logger: log, Registerer: reg})
		g.Go(func() error { return d.elector.Run(gctx) })
		g.Go(func() error { d.recordLeadership(gctx); return nil })
	}
	for _, p := range daemonParts {
		if err := p.start(gctx, d, srv, g); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	// The roles start only now: a part such as rollout sets the sink's slice,
	// and a sink started before it would write keys outside the slice.
	for _, run := range roles {
		g.Go(run)
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin listen %s: %w", cfg.Admin.Listen, err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		var err error
		if cfg.Admin.TLSCert != "" {
			err = hs.ServeTLS(ln, cfg.Admin.TLSCert, cfg.Admin.TLSKey)
		} else {
			err = hs.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	close(d.ready)
	base := "http://" + ln.Addr().String()
	if cfg.Admin.TLSCert != "" {
		base = "https://" + ln.Addr().String()
	}
	log.Info("tidemark running", "roles", cfg.Roles, "admin", base, "metrics", base+"/metrics")
	d.store.Append(ctx, checkpoints.AuditEntry{Actor: "auto:daemon", Action: "daemon.start", Result: "ok",
		Details: map[string]any{"roles": cfg.Roles, "spec_version": specVersion(d.mapping)}})
	err = g.Wait()
	d.store.Append(context.Background(), checkpoints.AuditEntry{Actor: "auto:daemon", Action: "daemon.stop", Result: resultOf(err)})
	return err
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
	return &exitError{code: 2, err: fmt.Errorf("sink: the spec does not fit the target tables (%d problems; `tidemark validate` shows them, "+
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

func (d *daemon) routes(srv *admin.Server, reg *prometheus.Registry) {
	// Probes answer without a token: Kubernetes sends none, and they say
	// nothing but "ok".
	srv.HandlePublic("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
	srv.HandlePublic("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-d.ready:
			w.Write([]byte("ready\n"))
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	srv.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), false)
	srv.Handle("GET /v1/status", http.HandlerFunc(d.status), false)
	srv.Handle("GET /v1/audit", http.HandlerFunc(d.audit), false)
	srv.Handle("GET /v1/lag/history", http.HandlerFunc(d.lagHistoryView), false)
	srv.Handle("POST /v1/pause", d.pauseHandler(true), true)
	srv.Handle("POST /v1/resume", d.pauseHandler(false), true)
	srv.Handle("POST /v1/rewind", http.HandlerFunc(d.rewind), true)
	srv.Handle("POST /v1/backfill", http.HandlerFunc(d.backfill), true)
	srv.Handle("GET /v1/leader", http.HandlerFunc(d.leaderInfo), false)
}

// Status is GET /v1/status.
type Status struct {
	Roles       []string                    `json:"roles"`
	SpecVersion string                      `json:"spec_version,omitempty"`
	Partitions  []sink.PartitionLag         `json:"partitions"`
	Paused      []sink.TopicPartition       `json:"paused"`
	Backfill    map[string]capture.Progress `json:"backfill"`
	// Streams is each captured namespace's change-stream position and, when
	// capture of it stopped, why.
	Streams map[string]capture.StreamStatus `json:"streams,omitempty"`
	Leader  LeaderInfo                      `json:"leader"`
}

func (d *daemon) status(w http.ResponseWriter, r *http.Request) {
	st := Status{Roles: d.cfg.Roles, SpecVersion: specVersion(d.mapping), Backfill: map[string]capture.Progress{}, Partitions: []sink.PartitionLag{}}
	if d.sink != nil {
		st.Partitions = d.sink.Lag()
	}
	st.Paused, _, _ = checkpoints.GetJSON[[]sink.TopicPartition](r.Context(), d.store, sink.PausedKey)
	st.Leader, _ = d.leaderState(r.Context())
	for _, ns := range d.cfg.Capture.Namespaces {
		if p, ok, _ := capture.BackfillProgress(r.Context(), d.store, ns); ok {
			st.Backfill[ns] = p
		}
		if s, ok, _ := capture.Stream(r.Context(), d.store, ns); ok {
			if st.Streams == nil {
				st.Streams = map[string]capture.StreamStatus{}
			}
			st.Streams[ns] = s
		}
	}
	admin.WriteJSON(w, 200, st)
}

// lagHistoryView is GET /v1/lag/history: every partition's lag samples of
// the last hour, oldest first. A daemon without the sink role has none.
func (d *daemon) lagHistoryView(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if d.lagHistory == nil {
		admin.WriteJSON(w, 200, sink.LagHistoryView{At: now.UTC(), Partitions: []sink.PartitionHistory{}})
		return
	}
	v := d.lagHistory.View(now)
	v.At = v.At.UTC()
	admin.WriteJSON(w, 200, v)
}

func (d *daemon) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := checkpoints.AuditFilter{Actor: q.Get("actor"), Action: q.Get("action")}
	f.Limit, _ = strconv.Atoi(q.Get("limit"))
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			admin.WriteError(w, 400, fmt.Errorf("since: %w", err))
			return
		}
		f.Since = t
	}
	es, err := d.store.Audit(r.Context(), f)
	if err != nil {
		admin.WriteError(w, 500, err)
		return
	}
	if es == nil {
		es = []checkpoints.AuditEntry{}
	}
	admin.WriteJSON(w, 200, es)
}

// PauseRequest is the body of POST /v1/pause and /v1/resume.
type PauseRequest struct {
	Topic      string  `json:"topic"`
	Partitions []int32 `json:"partitions"`
	Reason     string  `json:"reason"`
}

func (d *daemon) pauseHandler(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req PauseRequest
		if err := decode(r, &req); err != nil {
			admin.WriteError(w, 400, err)
			return
		}
		tps, err := d.partitions(r.Context(), req.Topic, req.Partitions)
		if err != nil {
			admin.WriteError(w, statusOf(err), err)
			return
		}
		now, err := sink.Pause(r.Context(), d.store, tps, pause)
		if errors.Is(err, checkpoints.ErrConflict) {
			admin.WriteError(w, http.StatusConflict, fmt.Errorf("not done: %w", err))
			return
		}
		if err != nil {
			admin.WriteError(w, 500, err)
			return
		}
		admin.WriteJSON(w, 200, map[string]any{"paused": now})
	}
}

// partitions expands a topic and optional partition list, refusing a
// partition the topic does not have (a request for it would wait forever for
// an owner that cannot exist).
func (d *daemon) partitions(ctx context.Context, topic string, parts []int32) ([]sink.TopicPartition, error) {
	if topic == "" {
		return nil, invalidf("topic is required (see `tidemark status` for topics)")
	}
	td, err := d.adm.ListTopics(ctx, topic)
	if err != nil {
		return nil, err
	}
	t, ok := td[topic]
	if !ok || t.Err != nil {
		return nil, notFoundf("topic %s not found (see `tidemark status` for topics)", topic)
	}
	have := t.Partitions.Numbers()
	if len(parts) == 0 {
		parts = have
	}
	exists := make(map[int32]bool, len(have))
	for _, p := range have {
		exists[p] = true
	}
	out := make([]sink.TopicPartition, len(parts))
	for i, p := range parts {
		if !exists[p] {
			return nil, invalidf("topic %s has no partition %d; it has partitions 0 to %d", topic, p, len(have)-1)
		}
		out[i] = sink.TopicPartition{Topic: topic, Partition: p}
	}
	return out, nil
}

func (d *daemon) backfill(w http.ResponseWriter, r *http.Request) {
	var req capture.Request
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	if err := d.checkBackfillNamespace(req.Namespace); err != nil {
		admin.WriteError(w, statusOf(err), err)
		return
	}
	req.Actor = admin.Actor(r.Context())
	id, err := capture.Enqueue(r.Context(), d.store, req)
	if err != nil {
		admin.WriteError(w, 500, err)
		return
	}
	admin.WriteJSON(w, 202, map[string]string{"request": id, "status": "queued for the capture role"})
}

// checkBackfillNamespace refuses a backfill that no capture would ever take
// from the queue: a namespace outside this daemon's capture namespaces (or,
// on a daemon without that list, outside its spec).
func (d *daemon) checkBackfillNamespace(ns string) error {
	if ns == "" {
		return invalidf("namespace is required")
	}
	known := d.cfg.Capture.Namespaces
	if len(known) == 0 && d.mapping != nil {
		known = d.mapping.Namespaces()
	}
	if len(known) == 0 || slices.Contains(known, ns) {
		return nil
	}
	return notFoundf("no capture runs for %s: the configured namespaces are %v", ns, known)
}
