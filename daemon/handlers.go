package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/sink"
)

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

func (d *daemon) pauseHandler(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req PauseRequest
		if err := decode(r, &req); err != nil {
			admin.WriteError(w, 400, err)
			return
		}
		tps, err := d.partitions(r.Context(), req.Topic, req.Partitions)
		if err != nil {
			admin.WriteError(w, StatusOf(err), err)
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
		admin.WriteError(w, StatusOf(err), err)
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
func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}
