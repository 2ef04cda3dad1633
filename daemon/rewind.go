package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func (d *daemon) rewind(w http.ResponseWriter, r *http.Request) {
	var req RewindRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	plan, err := d.planRewind(r.Context(), req)
	if err != nil {
		admin.WriteError(w, StatusOf(err), err)
		return
	}
	if !req.Execute {
		admin.WriteJSON(w, 200, plan)
		return
	}
	rr := sink.RewindRequest{ID: plan.ID, Targets: map[string]map[int32]int64{plan.Topic: {}},
		Actor: admin.Actor(r.Context()), Reason: req.Reason}
	for _, p := range plan.Partitions {
		rr.Targets[plan.Topic][p.Partition] = p.Target
	}
	key := sink.RewindKeyPrefix + plan.ID
	if err := checkpoints.PutJSON(r.Context(), d.store, key, rr); err != nil {
		admin.WriteError(w, 500, err)
		return
	}
	// The partitions' owners (this daemon or another) move their positions
	// between polls; wait for all of them.
	deadline := time.Now().Add(60 * time.Second)
	for {
		cur, _, err := checkpoints.GetJSON[sink.RewindRequest](r.Context(), d.store, key)
		if err == nil && cur.Remaining() == 0 {
			plan.Executed, plan.Done = true, cur.Done
			admin.WriteJSON(w, 200, plan)
			return
		}
		if time.Now().After(deadline) {
			admin.WriteError(w, 504, fmt.Errorf("rewind %s queued but not every partition owner executed it within 60s; is a sink running for %s? (request kept at %s)", plan.ID, plan.Topic, key))
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// planRewind works out what a rewind would move, refusing a target outside
// what the log holds rather than clamping it: an operator who asked for
// offset -5 or "by a million" meant something else, and "from the start"
// silently could replay weeks.
func (d *daemon) planRewind(ctx context.Context, req RewindRequest) (*RewindPlan, error) {
	if err := req.check(); err != nil {
		return nil, err
	}
	tps, err := d.partitions(ctx, req.Topic, req.Partitions)
	if err != nil {
		return nil, err
	}
	grace, err := d.minGCGrace(ctx)
	if err != nil {
		return nil, err
	}
	committed, err := d.adm.FetchOffsets(ctx, d.cfg.Sink.Group)
	if err != nil {
		return nil, fmt.Errorf("read committed offsets of group %s: %w", d.cfg.Sink.Group, err)
	}
	starts, err := d.adm.ListStartOffsets(ctx, req.Topic)
	if err != nil {
		return nil, err
	}
	var atTime map[int32]int64
	if req.ToTime != nil {
		lo, err := d.adm.ListOffsetsAfterMilli(ctx, req.ToTime.UnixMilli(), req.Topic)
		if err != nil {
			return nil, err
		}
		atTime = map[int32]int64{}
		lo.Each(func(o kadm.ListedOffset) { atTime[o.Partition] = o.Offset })
	}
	var marks map[int32]checkpoints.Mark
	if req.ToMark != "" {
		if marks, err = verifiedMarks(ctx, d.store, req.Topic, req.ToMark); err != nil {
			return nil, err
		}
	}
	plan := &RewindPlan{ID: fmt.Sprintf("rw-%d", time.Now().UnixNano()), Topic: req.Topic, GCGrace: grace}
	for _, tp := range tps {
		cur := int64(0)
		if o, ok := committed.Lookup(tp.Topic, tp.Partition); ok {
			cur = o.At
		}
		start := int64(0)
		if s, ok := starts.Lookup(tp.Topic, tp.Partition); ok {
			start = s.Offset
		}
		target, mark, err := req.target(tp.Partition, cur, start, atTime, marks)
		if err != nil {
			return nil, err
		}
		plan.Partitions = append(plan.Partitions, PartitionPlan{Partition: tp.Partition, Current: cur, Target: target, Start: start, Replay: cur - target, Mark: mark})
		plan.Replay += cur - target
	}
	sort.Slice(plan.Partitions, func(i, j int) bool { return plan.Partitions[i].Partition < plan.Partitions[j].Partition })
	if err := d.describeReplay(ctx, plan); err != nil {
		return nil, err
	}
	if err := plan.checkGrace(); err != nil {
		return nil, err
	}
	return plan, nil
}

// check refuses a request that names no target, several, or one that
// cannot be right whatever the log holds.
func (req RewindRequest) check() error {
	targets := 0
	for _, set := range []bool{req.ToTime != nil, req.ToOffset != nil, req.By != nil, req.ToMark != ""} {
		if set {
			targets++
		}
	}
	if targets != 1 {
		return invalidf("give exactly one of to_time, to_offset, by, to_mark")
	}
	switch {
	case req.ToOffset != nil && *req.ToOffset < 0:
		return invalidf("to_offset %d is negative; offsets start at 0", *req.ToOffset)
	case req.By != nil && *req.By < 0:
		return invalidf("by %d is negative; a rewind goes back by a positive number of records", *req.By)
	case req.ToTime != nil && req.ToTime.UnixMilli() < 0:
		return invalidf("to_time %s is before 1970; Kafka timestamps start at the Unix epoch", req.ToTime.Format(time.RFC3339))
	}
	return nil
}

// target is where the request moves partition p, whose committed offset
// is cur and whose log starts at start; mark names the verified mark it
// came from. atTime and marks are the offsets at to_time and the verified
// marks, when the request names them.
func (req RewindRequest) target(p int32, cur, start int64, atTime map[int32]int64, marks map[int32]checkpoints.Mark) (target int64, mark string, err error) {
	switch {
	case req.ToMark != "":
		mk, ok := marks[p]
		if !ok {
			return 0, "", notFoundf("partition %d of %s has no verified mark named %q; list them with `tidemark status --json` (verified marks) or run `tidemark reconcile`", p, req.Topic, req.ToMark)
		}
		target, mark = mk.Offset, mk.Name
	case req.ToOffset != nil:
		target = *req.ToOffset
		if target < start {
			return 0, "", invalidf("partition %d: offset %d is no longer in the log, which holds %d to %d; rewind to an offset in that range", p, target, start, cur)
		}
	case req.By != nil:
		target = cur - *req.By
		if target < start {
			return 0, "", invalidf("partition %d: by %d goes past the start of the log (offset %d); at most %d records can be replayed there", p, *req.By, start, cur-start)
		}
	default:
		target = atTime[p]
	}
	// A verified mark or a time older than the log's start replays
	// what the log still holds: both name a moment, not an offset.
	target = max(target, start)
	if target > cur {
		return 0, "", invalidf("partition %d: target %d is ahead of the committed offset %d; a rewind only goes back", p, target, cur)
	}
	return target, mark, nil
}

// checkGrace refuses a plan that would replay a write older than the target
// tables' gc_grace_seconds. Whatever the target kind, what matters for
// resurrection is how old the oldest replayed write is: Cassandra may
// already have purged a tombstone older than that which this write would
// otherwise lose to.
func (plan *RewindPlan) checkGrace() error {
	if plan.GCGrace <= 0 {
		return nil
	}
	for _, p := range plan.Partitions {
		if p.FirstTime != nil && time.Since(*p.FirstTime) > time.Duration(plan.GCGrace)*time.Second {
			return conflictf("refused: partition %d would replay from offset %d, written %s, further back than the target tables' gc_grace_seconds (%ds); "+
				"tombstones older than that may be purged, and replaying older inserts could resurrect deleted rows. Rewind less far, or re-backfill with `tidemark backfill`",
				p.Partition, p.Target, p.FirstTime.Format(time.RFC3339), plan.GCGrace)
		}
	}
	return nil
}

// verifiedMarks returns, per partition of topic, the verified mark named name
// ("latest": the newest one of each partition).
func verifiedMarks(ctx context.Context, st checkpoints.Store, topic, name string) (map[int32]checkpoints.Mark, error) {
	all, err := st.List(ctx, checkpoints.PrefixVerified+topic+"/")
	if err != nil {
		return nil, fmt.Errorf("read verified marks of %s: %w", topic, err)
	}
	out := map[int32]checkpoints.Mark{}
	for _, b := range all {
		var m checkpoints.Mark
		if json.Unmarshal(b, &m) != nil || m.Topic != topic {
			continue
		}
		cur, seen := out[m.Partition]
		switch {
		case name == "latest" && (!seen || m.Wall.After(cur.Wall)):
			out[m.Partition] = m
		case m.Name == name:
			out[m.Partition] = m
		}
	}
	return out, nil
}

// describeReplay reads the first record each partition would replay, for its
// version and write time: the plan shows what will be replayed, and the
// gc_grace guard needs the time whatever kind of target was given.
func (d *daemon) describeReplay(ctx context.Context, plan *RewindPlan) error {
	at := map[int32]kgo.Offset{}
	for _, p := range plan.Partitions {
		if p.Replay > 0 {
			at[p.Partition] = kgo.NewOffset().At(p.Target)
		}
	}
	if len(at) == 0 {
		return nil
	}
	kopts, err := d.cfg.KafkaOpts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{plan.Topic: at}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	first := map[int32]*kgo.Record{}
	for len(first) < len(at) {
		fs := cl.PollFetches(pctx)
		if pctx.Err() != nil {
			return fmt.Errorf("read the first record to replay of %s: %d of %d partitions answered within 15s", plan.Topic, len(first), len(at))
		}
		fs.EachRecord(func(r *kgo.Record) {
			if first[r.Partition] == nil {
				first[r.Partition] = r
			}
		})
	}
	for i := range plan.Partitions {
		p := &plan.Partitions[i]
		r := first[p.Partition]
		if r == nil {
			continue
		}
		// The older of the write time and the source version's time: a
		// backfill record carries a version older than when it was produced.
		ts := r.Timestamp.UTC()
		if ev, err := envelope.Decode(r.Value); err == nil {
			p.FirstVersion = ev.Version.String()
			if vt := ev.Version.Time(); vt.Before(ts) {
				ts = vt
			}
		}
		p.FirstTime = &ts
	}
	return nil
}

// minGCGrace is the smallest gc_grace_seconds among the mapped tables.
func (d *daemon) minGCGrace(ctx context.Context) (int, error) {
	if d.cass == nil || d.mapping == nil {
		return 0, nil
	}
	best := 0
	for _, ns := range d.mapping.Namespaces() {
		for _, t := range d.mapping.Tables(ns) {
			var g int
			err := d.cass.Query("SELECT gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
				t.Keyspace, t.Name).WithContext(ctx).Scan(&g)
			if err != nil {
				return 0, fmt.Errorf("read gc_grace_seconds of %s: %w", t.QualifiedName(), err)
			}
			if best == 0 || g < best {
				best = g
			}
		}
	}
	return best, nil
}
