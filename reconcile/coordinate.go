package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// RunningError refuses a round of a scope whose round is running already,
// on this daemon or another: it names that round and where it runs. It is
// ErrBusy to errors.Is.
type RunningError struct {
	Scope string
	Round string
	Owner string
	Actor string
}

func (e *RunningError) Error() string {
	return fmt.Sprintf("reconcile: round %s of %s is running on %s (started by %s); wait for its report",
		e.Round, e.Scope, e.Owner, e.Actor)
}

// Is makes a RunningError an ErrBusy.
func (e *RunningError) Is(target error) bool { return target == ErrBusy }

// takeScope makes this daemon the scope's coordinator: it creates the
// scope's running record, or takes over one that is released or whose
// coordinator stopped renewing it for a lease. A record that is renewed
// meanwhile is a live round elsewhere: RunningError. It returns the held
// record and the one it replaced (nil when there was none).
func (rd *round) takeScope(ctx context.Context, actor string) (*lease, *runningRound, error) {
	r := rd.r
	key := runningKey(rd.scope.Key())
	mine := runningRound{Round: rd.rep.ID, Owner: r.owner, Actor: actor, Started: rd.rep.Start}
	render := func(beat int64, now time.Time) any { c := mine; c.Beat, c.Renewed = beat, now; return c }
	if err := checkpoints.Sync(ctx, r.d.Store); err != nil {
		return nil, nil, err
	}
	// Watch the record afresh: a renewal seen by an earlier, refused start
	// says nothing about whether its holder lives now.
	r.obs.forget(key)
	for {
		cur, ver, found, err := getVersioned[runningRound](ctx, r.d.Store, key)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case !found, cur.Released, cur.Owner == r.owner:
			// Free, or this daemon's own record (a round of it that ended
			// without releasing it: rounds here run one at a time).
		case r.obs.changed(key, ver) || time.Since(cur.Renewed) < r.cfg.Lease/2:
			// Renewed while watched, or lately by its own clock: alive. The
			// clock is only trusted to refuse, never to take over.
			return nil, nil, &RunningError{Scope: rd.scope.Key(), Round: cur.Round, Owner: cur.Owner, Actor: cur.Actor}
		case !r.obs.stale(key, ver, r.cfg.Lease):
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(r.cfg.Lease / 20):
			}
			continue
		}
		mine.Beat, mine.Renewed = 1, time.Now().UTC()
		nver, err := putVersioned(ctx, r.d.Store, key, ver, mine)
		if errors.Is(err, checkpoints.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		r.obs.forget(key)
		var prior *runningRound
		if found {
			prior = &cur
			if !cur.Released && cur.Owner != r.owner {
				rd.auditTakeover(ctx, cur)
			}
		}
		l := hold(ctx, r.d.Store, key, nver, r.cfg.Lease/3, render)
		return l, prior, nil
	}
}

// auditTakeover records a round taken from a coordinator that stopped.
func (rd *round) auditTakeover(ctx context.Context, from runningRound) {
	r := rd.r
	r.log.Warn("took over a round whose coordinator stopped renewing it", "scope", rd.scope.Key(), "round", from.Round, "from", from.Owner)
	err := r.d.Store.Append(ctx, checkpoints.AuditEntry{Actor: "auto:reconcile", Action: "reconcile.round.takeover",
		Target: rd.scope.Key(), Result: "ok", Reason: fmt.Sprintf("round %s of %s was not renewed for %s", from.Round, from.Owner, r.cfg.Lease),
		Details: map[string]any{"round": from.Round, "from": from.Owner, "to": r.owner, "new_round": rd.rep.ID}})
	if err != nil {
		r.log.Warn("cannot audit a round takeover", "err", err)
	}
}

// releaseScope ends the coordinator's record: deleted when the round is
// over, or marked released with its manifest when an unfinished segmented
// round leaves its segments for the next round of the scope.
func (rd *round) releaseScope(ctx context.Context, held *lease, keep *manifest) {
	if held == nil {
		return
	}
	var last any
	if keep != nil {
		last = runningRound{Round: rd.rep.ID, Owner: rd.r.owner, Started: rd.rep.Start, Released: true, Manifest: keep, Renewed: time.Now().UTC()}
	}
	if err := held.end(ctx, last); err != nil {
		rd.r.log.Warn("cannot release the scope's running record", "scope", rd.scope.Key(), "err", err)
	}
}

// bySegments is the full round split into segments: publish (or adopt)
// the manifest, take segments alongside the Workers of other daemons until
// all are done, merge their trees, then compare as byTree does. It returns
// the manifest to keep when the round stops unfinished (nil once the round
// has compared: its segments are then deleted).
func (rd *round) bySegments(ctx context.Context, fresh bool, held *lease, prior *runningRound) (*manifest, error) {
	r := rd.r
	var m *manifest
	if prior != nil && rd.sameRound(prior.Manifest, fresh) {
		m = prior.Manifest
		rd.rep.ResumedFrom = prior.Round
		r.log.Info("finishing a segmented round", "scope", rd.scope.Key(), "from", prior.Round, "segments", len(m.Segments))
	} else {
		if prior != nil && prior.Manifest != nil {
			if err := deleteSegments(ctx, r.d.Store, prior.Manifest.ID); err != nil {
				r.log.Warn("cannot delete an abandoned round's segments", "round", prior.Manifest.ID, "err", err)
			}
		}
		n, _ := rd.src.coll.EstimatedDocumentCount(ctx)
		bits := r.cfg.BucketBits
		if bits == 0 {
			bits = bucketBitsFor(n)
		}
		specs, err := rd.splitSegments(ctx, r.cfg.Segments)
		if err != nil {
			return nil, err
		}
		m = &manifest{ID: rd.rep.ID, Scope: rd.scope, SpecChecksum: r.d.Mapping.Checksum(), Bits: max(bits, segBits),
			Slice: rd.rep.Slice, Start: rd.rep.Start, Segments: specs}
	}
	rd.st = roundState{ID: m.ID, SpecChecksum: m.SpecChecksum, Bits: m.Bits, Start: m.Start,
		SrcRows: make([]int64, len(rd.tables)), TgtRows: make([]int64, len(rd.tables))}
	rd.exp, rd.act = nil, nil
	for range rd.tables {
		rd.exp, rd.act = append(rd.exp, newTree(m.Bits)), append(rd.act, newTree(m.Bits))
	}
	rd.rep.BucketBits = m.Bits
	rd.segsTotal.Store(int64(len(m.Segments)))
	rd.docsTotal, _ = rd.src.coll.EstimatedDocumentCount(ctx)
	err := held.update(ctx, func(beat int64, now time.Time) any {
		return runningRound{Round: rd.rep.ID, Owner: r.owner, Actor: rd.rep.Actor, Started: rd.rep.Start, Beat: beat,
			Renewed: now, Manifest: m}
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile: publish the round's segments: %w", err)
	}
	start := time.Now()
	w := &segmentWorker{rd: rd, m: m, obs: r.obs, live: func(context.Context) bool { return true },
		done: func(n int) { rd.segsDone.Store(int64(n)) }}
	err = w.run(ctx)
	rd.rep.SourceSeconds = time.Since(start).Seconds()
	rd.rep.TargetSeconds = rd.rep.SourceSeconds
	if err != nil {
		return m, err
	}
	rd.segsDone.Store(int64(len(m.Segments)))
	rd.docs.Store(0)
	if err := rd.mergeSegments(ctx, m); err != nil {
		return m, err
	}
	if err := rd.compare(ctx); err != nil {
		// The next round of the scope merges the stored segments again and
		// compares anew, as a resumed single-daemon round does.
		return m, err
	}
	return nil, nil
}

// segmentCounters are a segmented round's progress: segments in all and
// done, as the coordinator last saw them.
type segmentCounters struct {
	segsTotal atomic.Int64
	segsDone  atomic.Int64
}
