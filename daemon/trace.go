package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/trace"
)

// tracer serves GET /v1/trace. Its connections open on the first request: a
// daemon that is never asked pays nothing.
type tracer struct {
	d    *daemon
	ctx  context.Context
	mu   sync.Mutex
	deps *trace.Deps
}

// startTrace serves GET /v1/trace.
func (d *daemon) startTrace(ctx context.Context, srv *admin.Server) {
	if d.mapping == nil {
		return
	}
	t := &tracer{d: d, ctx: ctx}
	srv.Handle("GET /v1/trace", http.HandlerFunc(t.serve), false)
}

func (t *tracer) open() (*trace.Deps, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deps != nil {
		return t.deps, nil
	}
	cfg := t.d.cfg
	conns, err := openReconcileConns(t.ctx, cfg, t.d.cass, t.d.mongo)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(t.ctx, conns.close)
	kopts, err := cfg.KafkaOpts()
	if err != nil {
		return nil, err
	}
	prefix := cfg.Capture.TopicPrefix
	t.deps = &trace.Deps{
		Mapping: t.d.mapping,
		Source:  trace.MongoSource{Client: conns.mongo},
		Log:     trace.KafkaLog{Opts: kopts, Admin: t.d.adm, Group: cfg.Reconcile.SinkGroup},
		Target:  trace.CassandraTarget{Session: conns.cass},
		Reports: trace.DirReports{Reports: reconcile.Reports{Dir: cfg.Reconcile.ReportDir}},
		Topic:   func(ns string) string { return envelope.Topic(prefix, ns) },
	}
	return t.deps, nil
}

func (t *tracer) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ns, idText := q.Get("namespace"), q.Get("id")
	if ns == "" || idText == "" {
		admin.WriteError(w, 400, errors.New("namespace and id are required: GET /v1/trace?namespace=db.coll&id=<_id as extended JSON>"))
		return
	}
	id, err := trace.ParseID(idText)
	if err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	deps, err := t.open()
	if err != nil {
		admin.WriteError(w, 503, fmt.Errorf("trace needs MongoDB, Kafka and Cassandra: %w", err))
		return
	}
	j, err := trace.Follow(r.Context(), *deps, ns, id)
	if err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	admin.WriteJSON(w, 200, j)
}
