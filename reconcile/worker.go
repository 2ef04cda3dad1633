package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Worker takes segments of rounds that any daemon coordinates
// (reconcile.segments > 1): every daemon with reconcile on runs one, so a
// round's hashing spreads over the daemons and a daemon that dies loses
// only the segment it held, which another Worker hashes again once its
// lease expires. The round this daemon's own Reconciler coordinates is
// left to it (it takes segments itself).
type Worker struct {
	r *Reconciler
	// poll is how often the store is asked for rounds to help.
	poll time.Duration
}

// NewWorker returns a Worker that hashes segments with r's connections,
// spec, limits and identity (Deps.Name).
func NewWorker(r *Reconciler) *Worker { return &Worker{r: r, poll: time.Second} }

// Run helps rounds until ctx ends; it returns nil then. A segment that
// fails is logged and left: its lease is released, so another worker, or
// this one on its next look, takes it again.
func (w *Worker) Run(ctx context.Context) error {
	t := time.NewTicker(w.poll)
	defer t.Stop()
	for {
		for _, rr := range w.rounds(ctx) {
			if err := w.help(ctx, rr); err != nil && ctx.Err() == nil {
				w.r.log.Warn("cannot help a round", "round", rr.Round, "scope", rr.Manifest.Scope.Key(), "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rounds lists the segmented rounds running now that this worker can help:
// another coordinator's, of this daemon's spec, oldest first.
func (w *Worker) rounds(ctx context.Context) []runningRound {
	r := w.r
	all, err := r.d.Store.List(ctx, checkpoints.PrefixReconcile+"running/")
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("cannot list running rounds", "err", err)
		}
		return nil
	}
	var out []runningRound
	for _, b := range all {
		var rr runningRound
		if json.Unmarshal(b, &rr) != nil || rr.Manifest == nil || rr.Released || rr.Owner == r.owner ||
			rr.Manifest.SpecChecksum != r.d.Mapping.Checksum() {
			continue
		}
		out = append(out, rr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Manifest.Start.Before(out[j].Manifest.Start) })
	return out
}

// help takes segments of one round until they are all done or the round
// stops running.
func (w *Worker) help(ctx context.Context, rr runningRound) error {
	r, m := w.r, rr.Manifest
	tables, err := r.tables(m.Scope)
	if err != nil {
		return err
	}
	src, err := newSource(r.d.Mongo, m.Scope.Namespace)
	if err != nil {
		return err
	}
	rd := &round{r: r, scope: m.Scope, tables: tables, src: src, st: roundState{Bits: m.Bits},
		docLim: limiter(r.cfg.DocsPerSecond), rowLim: limiter(r.cfg.RowsPerSecond)}
	for _, t := range tables {
		rd.tgts = append(rd.tgts, newTarget(r.d.Cassandra, t))
	}
	if r.d.Slice != nil {
		// Segments must judge the slice the round started with. The
		// description names it exactly (every share of every namespace); a
		// daemon whose plan has moved on leaves the round to the others.
		in, desc, err := r.d.Slice(ctx)
		if err != nil {
			return err
		}
		if desc != m.Slice {
			return fmt.Errorf("reconcile: this daemon's rollout slice %q is not the round's %q", desc, m.Slice)
		}
		rd.inSlice = in
	}
	key := runningKey(m.Scope.Key())
	live := func(ctx context.Context) bool {
		cur, _, found, err := getVersioned[runningRound](ctx, r.d.Store, key)
		return err == nil && found && !cur.Released && cur.Manifest != nil && cur.Manifest.ID == m.ID
	}
	sw := &segmentWorker{rd: rd, m: m, obs: r.obs, live: live}
	return sw.run(ctx)
}
