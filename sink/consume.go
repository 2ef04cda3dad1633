package sink

// This file consumes: the group callbacks, the poll loop, and applying a
// poll's records through the writers.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func (s *Sink) assigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			s.owned[TopicPartition{Topic: t, Partition: p}] = true
		}
	}
	s.log.Info("partitions assigned", "partitions", m)
}

// appliedOffsets is what may be committed: per partition, the offset after
// the last record whose writes Cassandra acknowledged. The client's own
// "uncommitted offsets" are not used: they advance when records are polled,
// before they are written.
func (s *Sink) appliedOffsets() map[string]map[int32]kgo.EpochOffset {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int32]kgo.EpochOffset{}
	for tp, st := range s.parts {
		if st.committed < 0 || !s.owned[tp] {
			continue
		}
		if out[tp.Topic] == nil {
			out[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		out[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: st.epoch, Offset: st.committed}
	}
	return out
}

func (s *Sink) commitDone(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
	if err == nil && resp != nil {
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err = kerr.ErrorForCode(p.ErrorCode); err != nil {
					break
				}
			}
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		// The records stay uncommitted and are applied again later: harmless.
		s.log.Warn("commit failed", "err", err)
	}
}

// revoked runs while no poll is being applied (rebalances are blocked during
// one), so every record handed out has been written; committing synchronously
// here means the next owner starts exactly after them.
func (s *Sink) revoked(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	cl.CommitOffsetsSync(ctx, s.appliedOffsets(), s.commitDone)
	s.lost(ctx, cl, m)
}

// lost forgets partitions taken away without a chance to commit (the group
// session expired); their new owner replays from the last commit.
func (s *Sink) lost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			delete(s.owned, TopicPartition{Topic: t, Partition: p})
			delete(s.parts, TopicPartition{Topic: t, Partition: p})
		}
	}
	s.log.Info("partitions revoked", "partitions", m)
}

// Run consumes until ctx ends or a record can be neither written nor
// dead-lettered; then nothing past it is committed. A Sink runs once.
func (s *Sink) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("sink: Run called twice")
	}
	dlq := envelope.DeadLetterTopic(s.cfg.TopicPrefix)
	if _, err := kadm.NewClient(s.cl).CreateTopic(ctx, -1, -1, nil, dlq); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		s.log.Warn("cannot create the dead-letter topic; dead letters will fail until it exists", "topic", dlq, "err", err)
	}
	if err := s.waitForTopics(ctx); err != nil {
		return nil
	}
	// The writers outlive ctx: apply waits for every task it queued, and a
	// task queued as ctx ends must still be taken (it returns at once), or
	// apply would wait forever. Once Run no longer applies nothing sends, so
	// closing the queue stops them.
	var pooled sync.WaitGroup
	pooled.Go(func() { s.runPool(s.tasks) })
	defer func() { close(s.tasks); pooled.Wait() }()
	s.applyIntents(ctx)
	lastIntent := time.Now()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := s.cl.PollRecords(pctx, 10_000)
		cancel()
		if ctx.Err() != nil {
			s.cl.AllowRebalance()
			return nil
		}
		var fenced error
		fs.EachError(func(t string, p int32, err error) {
			switch {
			case errors.Is(err, kerr.FencedInstanceID):
				fenced = err
			case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled):
				s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		if fenced != nil {
			s.fenced.Store(true)
			s.cl.AllowRebalance()
			return fmt.Errorf("%w: sink.instance_id %q of group %s is in use by another process; "+
				"give each daemon its own (docs/deploy.md): %w", ErrFenced, s.cfg.InstanceID, s.cfg.Group, fenced)
		}
		if err := s.apply(ctx, fs); err != nil {
			s.cl.AllowRebalance()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if fs.NumRecords() > 0 {
			// Asynchronous: the next poll is written while this commit is on
			// its way. franz-go orders commits, and a lost one only means
			// records applied again later, which is harmless.
			s.cl.CommitOffsets(ctx, s.appliedOffsets(), s.commitDone)
		}
		s.cl.AllowRebalance()
		if time.Since(lastIntent) > time.Second {
			s.applyIntents(ctx)
			s.refreshEnds(ctx)
			lastIntent = time.Now()
		}
		s.maybeMark(ctx)
	}
}

// waitForTopics blocks until capture created every topic the sink consumes.
// A group joined before its topics exist would notice them only at the next
// metadata refresh, minutes later.
func (s *Sink) waitForTopics(ctx context.Context) error {
	adm := kadm.NewClient(s.cl)
	logged := false
	for {
		td, err := adm.ListTopics(ctx, s.topics...)
		missing := []string{}
		for _, t := range s.topics {
			if d, ok := td[t]; err != nil || !ok || d.Err != nil {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 {
			s.cl.ForceMetadataRefresh()
			return nil
		}
		if !logged {
			s.log.Info("waiting for capture to create topics", "topics", missing)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// pollResult is what one partition's share of a poll applied.
type pollResult struct {
	tp   TopicPartition
	last *kgo.Record
	maxV envelope.Version
}

// apply writes one poll's records. Each partition's records are decoded and
// grouped by a producer of their own, which hands writes to the shared pool
// as it goes, at most Concurrency of them at a time; apply returns once every
// write is acknowledged (or has failed, and then nothing is recorded as
// applied).
func (s *Sink) apply(ctx context.Context, fs kgo.Fetches) error {
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var results []*pollResult
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		tp := TopicPartition{Topic: p.Topic, Partition: p.Partition}
		s.mu.Lock()
		st := s.parts[tp]
		if st == nil {
			st = &partState{committed: -1}
			s.parts[tp] = st
		}
		st.end = max(st.end, p.HighWatermark)
		s.mu.Unlock()
		if len(p.Records) == 0 {
			return
		}
		res := &pollResult{tp: tp, last: p.Records[len(p.Records)-1]}
		results = append(results, res)
		wg.Add(1)
		pr := &producer{s: s, ctx: pctx, fail: cancel, wg: &wg, sem: make(chan struct{}, s.cfg.Concurrency)}
		go func() {
			defer wg.Done()
			if err := pr.produce(p.Records, res); err != nil {
				cancel(err)
			}
		}()
	})
	wg.Wait()
	// An error, or the end of ctx, leaves writes undone: no offset may move.
	if pctx.Err() != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		return context.Cause(pctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range results {
		if st := s.parts[r.tp]; st != nil {
			st.committed = r.last.Offset + 1
			st.epoch = r.last.LeaderEpoch
			st.applied = envelope.Max(st.applied, r.maxV)
			st.appliedAt = time.Now()
			s.setLagMetrics(r.tp, st)
		}
	}
	return nil
}
