package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/tidemarkhq/tidemark/validate"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"
)

// startRollout builds the plan's engine over this daemon's sink, store and
// metrics, runs its evaluation loop, and mounts the plan and route API.
func (d *daemon) startRollout(ctx context.Context, srv *admin.Server, g *errgroup.Group) error {
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
	MountPlan(srv, e)
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
			o, err := v.d.cfg.MongoOptions()
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
			cl, err := v.d.cfg.CassandraCluster()
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
