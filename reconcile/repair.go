package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
)

// RepairOptions are who asks and why, and how long to wait for capture.
type RepairOptions struct {
	Actor  string
	Reason string
	// Wait bounds how long capture may take to serve the re-emit request.
	// Default 2 minutes.
	Wait time.Duration
}

// RepairResult says what a repair did and what the re-check found.
type RepairResult struct {
	Namespace string `json:"namespace"`
	// Request is capture's targeted backfill request for the keys' documents.
	Request string `json:"request,omitempty"`
	// Reemitted counts documents re-emitted from the source (deleted ones as deletes).
	Reemitted int `json:"reemitted"`
	// Deleted counts extra rows no source document maps to, removed with a
	// tombstone at the row's own write time (a newer pipeline write still wins).
	Deleted int `json:"deleted"`
	Fixed   int `json:"fixed"`
	// Remaining are keys still divergent (or in flight) after the repair.
	Remaining []KeyRef `json:"remaining"`
}

// Repair re-emits the documents behind divergent keys through capture's
// targeted backfill (another daemon's capture serves it if this one has
// none), removes extra rows that no document maps to, waits for capture to
// take the request, and re-checks every key like a round does.
func (r *Reconciler) Repair(ctx context.Context, ns string, keys []KeyRef, o RepairOptions) (*RepairResult, error) {
	if o.Wait == 0 {
		o.Wait = 2 * time.Minute
	}
	tables, err := r.tables(Scope{Namespace: ns})
	if err != nil {
		return nil, err
	}
	src, err := newSource(r.d.Mongo, ns)
	if err != nil {
		return nil, err
	}
	rd := &round{r: r, scope: Scope{Namespace: ns}, tables: tables, src: src, rep: &Report{Counts: map[string]int64{}}}
	rd.rep.Tables = make([]TableReport, len(tables))
	tidx := map[string]int{}
	for i, t := range tables {
		rd.tgts = append(rd.tgts, newTarget(r.d.Cassandra, t))
		tidx[t.QualifiedName()] = i
	}
	res := &RepairResult{Namespace: ns, Remaining: []KeyRef{}}
	var ids [][]byte
	seen := map[string]bool{}
	var cands []candidate
	for _, k := range keys {
		i, ok := tidx[k.Table]
		if !ok {
			return nil, fmt.Errorf("reconcile: repair: table %s is not fed by %s", k.Table, ns)
		}
		if k.ID != nil {
			cands = append(cands, candidate{table: i, key: k.Key, id: k.ID})
			if !seen[string(k.ID)] {
				seen[string(k.ID)] = true
				ids = append(ids, k.ID)
			}
			continue
		}
		tg := rd.tgts[i]
		kv, err := tg.t.DecodeKey(k.Key)
		if err != nil {
			return nil, err
		}
		act, wt, found, err := tg.read(ctx, kv)
		if err != nil {
			return nil, err
		}
		if !found {
			// No row and no document named: nothing says what it should be.
			res.Remaining = append(res.Remaining, KeyRef{Table: k.Table, Key: k.Key, Class: "no_document_known"})
			continue
		}
		cands = append(cands, candidate{table: i, key: k.Key})
		if owner, _, err := rd.owner(ctx, tg.t, k.Key, act); err != nil {
			return nil, err
		} else if owner != nil {
			// A document maps here after all: re-emitting it is the repair.
			if !seen[string(owner)] {
				seen[string(owner)] = true
				ids = append(ids, owner)
			}
			continue
		}
		if err := tg.deleteAt(ctx, kv, wt); err != nil {
			return nil, fmt.Errorf("reconcile: repair: delete extra row of %s: %w", k.Table, err)
		}
		res.Deleted++
	}
	result := "ok"
	if len(ids) > 0 {
		res.Request, err = capture.Enqueue(ctx, r.d.Store, capture.Request{Namespace: ns, Keys: ids, Reason: o.Reason, Actor: o.Actor})
		if err != nil {
			return nil, err
		}
		res.Reemitted = len(ids)
		if err := r.awaitServed(ctx, res.Request, o.Wait); err != nil {
			r.audit(ctx, o, ns, "failed: "+err.Error(), res)
			return res, err
		}
	}
	if err := rd.recheckAll(ctx, cands, false); err != nil {
		return res, err
	}
	for i, c := range cands {
		if rd.outcomes[i].class == "match" || rd.outcomes[i].class == "resolved" {
			res.Fixed++
			continue
		}
		res.Remaining = append(res.Remaining, KeyRef{Table: tables[c.table].QualifiedName(), Key: c.key, ID: c.id, Class: rd.outcomes[i].class})
	}
	if len(res.Remaining) > 0 {
		result = fmt.Sprintf("partial: %d of %d keys still differ", len(res.Remaining), len(cands))
	}
	r.audit(ctx, o, ns, result, res)
	return res, nil
}

func (r *Reconciler) audit(ctx context.Context, o RepairOptions, ns, result string, res *RepairResult) {
	actor := o.Actor
	if actor == "" {
		actor = "auto:reconcile"
	}
	if err := r.d.Store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: actor, Action: "reconcile.repair", Target: ns,
		Reason: o.Reason, Result: result, Details: map[string]any{"reemitted": res.Reemitted, "deleted": res.Deleted,
			"fixed": res.Fixed, "remaining": len(res.Remaining), "request": res.Request}}); err != nil {
		r.log.Error("cannot write the audit log", "err", err)
	}
}

// awaitServed waits until capture took the request out of the store: by then
// it has produced the re-emitted records, so the sink's progress past the
// re-check's clock covers them.
func (r *Reconciler) awaitServed(ctx context.Context, key string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		_, err := r.d.Store.Get(ctx, key)
		if errors.Is(err, checkpoints.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("reconcile: repair: capture did not serve request %s within %s; is a daemon with the capture role running for this namespace?", key, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// KeysForIDs lists the rows the given documents write, or wrote, in every
// table of ns: their current rows, and for tables keyed by _id alone the key
// their _id gives even when the document is gone. ids are relaxed extended
// JSON (`42`, `"abc"`, `{"$oid": "..."}`). For Repair by _id.
func (r *Reconciler) KeysForIDs(ctx context.Context, ns string, ids []string) ([]KeyRef, error) {
	tables, err := r.tables(Scope{Namespace: ns})
	if err != nil {
		return nil, err
	}
	vals, err := parseIDs(ids)
	if err != nil {
		return nil, err
	}
	src, err := newSource(r.d.Mongo, ns)
	if err != nil {
		return nil, err
	}
	docs, err := src.find(ctx, vals)
	if err != nil {
		return nil, err
	}
	var out []KeyRef
	for _, c := range candidatesForIDs(r.d.Mapping, ns, tables, vals, docs) {
		out = append(out, KeyRef{Table: tables[c.table].QualifiedName(), Key: c.key, ID: c.id})
	}
	return out, nil
}
