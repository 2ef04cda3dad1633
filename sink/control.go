package sink

// This file is the control side: lag, offset marks, and the operator's
// pause and rewind intents every daemon applies.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// PausedKey holds the operator's paused partitions, shared by every daemon.
const PausedKey = checkpoints.PrefixIntent + "paused"

// RewindKeyPrefix holds rewind requests the partition owners execute.
const RewindKeyPrefix = checkpoints.PrefixIntent + "rewind/"

// setLagMetrics exports one partition's lag; s.mu is held.
func (s *Sink) setLagMetrics(tp TopicPartition, st *partState) {
	p := strconv.Itoa(int(tp.Partition))
	behind := max(0, st.end-st.committed)
	s.met.lagRecords.WithLabelValues(tp.Topic, p).Set(float64(behind))
	secs := 0.0
	if behind > 1 && !st.applied.IsZero() { // one offset is the commit marker; see Lag
		secs = max(0, time.Since(st.applied.Time()).Seconds())
	}
	s.met.lagSeconds.WithLabelValues(tp.Topic, p).Set(secs)
}

// refreshEnds reads the end offsets of the owned partitions. Fetches report
// them too, but a paused partition is not fetched: without this its lag
// would freeze at the moment of the pause while Kafka keeps buffering.
func (s *Sink) refreshEnds(ctx context.Context) {
	s.mu.Lock()
	topics := map[string]bool{}
	for tp := range s.owned {
		topics[tp.Topic] = true
	}
	s.mu.Unlock()
	if len(topics) == 0 {
		return
	}
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	ends, err := kadm.NewClient(s.cl).ListEndOffsets(ctx, names...)
	if err != nil {
		s.log.Debug("cannot list end offsets for lag", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ends.Each(func(o kadm.ListedOffset) {
		tp := TopicPartition{Topic: o.Topic, Partition: o.Partition}
		st := s.parts[tp]
		if o.Err != nil || st == nil || !s.owned[tp] {
			return
		}
		st.end = max(st.end, o.Offset)
		s.setLagMetrics(tp, st)
	})
}

// Lag reports every partition this process owns.
func (s *Sink) Lag() []PartitionLag {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PartitionLag, 0, len(s.owned))
	for tp := range s.owned {
		l := PartitionLag{Topic: tp.Topic, Partition: tp.Partition, Paused: s.paused[tp], Committed: -1}
		if st := s.parts[tp]; st != nil {
			l.Committed, l.End, l.Applied = st.committed, st.end, st.applied
			if st.committed >= 0 {
				l.RecordsBehind = max(0, st.end-st.committed)
			}
			// Capture writes every batch as a transaction, so a caught-up
			// partition still ends with one offset, the commit marker, that
			// holds no record: one offset behind is not behind in time.
			if !st.applied.IsZero() && l.RecordsBehind > 1 {
				l.SecondsBehind = time.Since(st.applied.Time()).Seconds()
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}

// Applied is the newest source version applied on a partition (zero if unknown).
func (s *Sink) Applied(topic string, partition int32) envelope.Version {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.parts[TopicPartition{Topic: topic, Partition: partition}]; st != nil {
		return st.applied
	}
	return envelope.Version{}
}

func (s *Sink) maybeMark(ctx context.Context) {
	if time.Since(s.lastMark) < s.cfg.MarkInterval {
		return
	}
	s.lastMark = time.Now()
	for _, l := range s.Lag() {
		if l.Committed < 0 {
			continue
		}
		m := checkpoints.Mark{Topic: l.Topic, Partition: l.Partition, Offset: l.Committed,
			VersionT: l.Applied.T, VersionI: l.Applied.I, Wall: time.Now().UTC()}
		if err := checkpoints.PutJSON(ctx, s.store, checkpoints.PartitionKey(checkpoints.PrefixMark, l.Topic, l.Partition), m); err != nil {
			s.log.Warn("cannot write offset mark", "err", err)
		}
	}
}

// applyIntents reconciles paused partitions and executes rewind requests for
// partitions this process owns. It runs between polls, when nothing is in flight.
func (s *Sink) applyIntents(ctx context.Context) {
	var want []TopicPartition
	if _, err := s.store.Get(ctx, PausedKey); err == nil {
		w, _, err := checkpoints.GetJSON[[]TopicPartition](ctx, s.store, PausedKey)
		if err != nil {
			s.log.Warn("cannot read paused partitions", "err", err)
			return
		}
		want = w
	}
	wantSet := map[TopicPartition]bool{}
	for _, tp := range want {
		wantSet[tp] = true
	}
	s.mu.Lock()
	pause, resume := map[string][]int32{}, map[string][]int32{}
	for tp := range wantSet {
		if !s.paused[tp] {
			pause[tp.Topic] = append(pause[tp.Topic], tp.Partition)
		}
	}
	for tp := range s.paused {
		if !wantSet[tp] {
			resume[tp.Topic] = append(resume[tp.Topic], tp.Partition)
		}
	}
	s.paused = wantSet
	s.mu.Unlock()
	if len(pause) > 0 {
		s.cl.PauseFetchPartitions(pause)
		s.log.Info("paused", "partitions", pause)
	}
	if len(resume) > 0 {
		s.cl.ResumeFetchPartitions(resume)
		s.log.Info("resumed", "partitions", resume)
	}
	s.met.paused.Set(float64(len(wantSet)))
	s.executeRewinds(ctx)
}

// RewindRequest asks the owners of partitions to move their positions.
type RewindRequest struct {
	ID      string                     `json:"id"`
	Targets map[string]map[int32]int64 `json:"targets"`
	Actor   string                     `json:"actor"`
	Reason  string                     `json:"reason"`
	// Done records, per "topic/partition", the offset it was moved from.
	Done map[string]int64 `json:"done,omitempty"`
}

// Remaining reports how many partitions have not been rewound yet.
func (r *RewindRequest) Remaining() int {
	n := 0
	for t, ps := range r.Targets {
		for p := range ps {
			if _, ok := r.Done[fmt.Sprintf("%s/%d", t, p)]; !ok {
				n++
			}
		}
	}
	return n
}

func (s *Sink) executeRewinds(ctx context.Context) {
	reqs, err := s.store.List(ctx, RewindKeyPrefix)
	if err != nil || len(reqs) == 0 {
		return
	}
	for key, b := range reqs {
		var r RewindRequest
		if json.Unmarshal(b, &r) != nil || r.Remaining() == 0 {
			continue
		}
		if r.Done == nil {
			r.Done = map[string]int64{}
		}
		set := map[string]map[int32]kgo.EpochOffset{}
		s.mu.Lock()
		for t, ps := range r.Targets {
			for p, off := range ps {
				tp := TopicPartition{Topic: t, Partition: p}
				if _, done := r.Done[fmt.Sprintf("%s/%d", t, p)]; done || !s.owned[tp] {
					continue
				}
				if set[t] == nil {
					set[t] = map[int32]kgo.EpochOffset{}
				}
				set[t][p] = kgo.EpochOffset{Epoch: -1, Offset: off}
				from := int64(-1)
				if st := s.parts[tp]; st != nil {
					from = st.committed
					st.committed, st.epoch = off, -1
				}
				r.Done[fmt.Sprintf("%s/%d", t, p)] = from
			}
		}
		s.mu.Unlock()
		if len(set) == 0 {
			continue
		}
		// Nothing is in flight between polls: moving the positions and
		// committing them is the whole rewind.
		s.cl.SetOffsets(set)
		var commitErr error
		s.cl.CommitOffsetsSync(ctx, set, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				commitErr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if e := kerr.ErrorForCode(p.ErrorCode); e != nil && commitErr == nil {
						commitErr = e
					}
				}
			}
		})
		if commitErr != nil {
			s.log.Error("rewind commit failed", "id", r.ID, "err", commitErr)
			continue
		}
		s.log.Info("rewound", "id", r.ID, "targets", set, "reason", r.Reason)
		// Owners of other partitions (other daemons) record theirs in the
		// same request at the same time: merge by compare-and-swap, or a
		// plain write would drop theirs and the rewind never finish.
		_, err := checkpoints.UpdateJSON(ctx, s.store, key, func(cur RewindRequest, found bool) (RewindRequest, error) {
			if !found {
				cur = r
			}
			if cur.Done == nil {
				cur.Done = map[string]int64{}
			}
			for k, v := range r.Done {
				cur.Done[k] = v
			}
			return cur, nil
		})
		if err != nil {
			s.log.Error("cannot record rewind progress", "id", r.ID, "err", err)
		}
	}
}

// Pause stores partitions as paused for every daemon; Run applies it.
func Pause(ctx context.Context, st checkpoints.Store, tps []TopicPartition, pause bool) ([]TopicPartition, error) {
	// Compare-and-swap: of concurrent calls (here or on other daemons)
	// each takes effect, or this one returns checkpoints.ErrConflict.
	return checkpoints.UpdateJSON(ctx, st, PausedKey, func(cur []TopicPartition, _ bool) ([]TopicPartition, error) {
		return mergePaused(cur, tps, pause), nil
	})
}

func mergePaused(cur, tps []TopicPartition, pause bool) []TopicPartition {
	set := map[TopicPartition]bool{}
	for _, tp := range cur {
		set[tp] = true
	}
	for _, tp := range tps {
		set[tp] = pause
	}
	return envelope.Members(set)
}
