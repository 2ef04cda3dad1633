//go:build integration

package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// startCapture runs capture (stream only) until stop is called; a later
// call resumes from the same checkpoint, as a restarted daemon does.
func (f *fixture) startCapture(ctx context.Context, partitions int32) (stop func()) {
	t := f.t
	off := false
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cp, err := capture.New(capture.Config{TopicPrefix: f.prefix, Namespaces: []string{f.ns}, Partitions: partitions,
		Backfill: capture.BackfillConfig{Enabled: &off}}, capture.Deps{Mongo: f.mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: f.store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cp.Run(cctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; cp.Close() }) }
	t.Cleanup(stop)
	return stop
}

// startSinkOnly runs the sink until the test ends, ready once it owns every
// partition.
func (f *fixture) startSinkOnly(ctx context.Context, partitions int) {
	t := f.t
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w, err := sink.NewCassandraWriter(ctx, f.s, f.m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sink.New(sink.Config{Group: f.group, TopicPrefix: f.prefix}, sink.Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)},
		Writer: w, Mapping: f.m, Store: f.store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.sink = sk
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { sk.Run(sctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sk.Close()
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.adm.DeleteTopics(c, envelope.Topic(f.prefix, f.ns), envelope.DeadLetterTopic(f.prefix))
	})
	deadline := time.Now().Add(60 * time.Second)
	for len(sk.Lag()) != partitions {
		if time.Now().After(deadline) {
			t.Fatalf("the sink owns %d partitions after 60s", len(sk.Lag()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// capturedPast waits until capture's checkpoint covers v.
func (f *fixture) capturedPast(ctx context.Context, v envelope.Version) {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, ok, _ := checkpoints.GetJSON[streamCheckpoint](ctx, f.store, checkpoints.PrefixCapture+f.ns)
		if ok && st.Token != nil && !(envelope.Version{T: st.T, I: st.I}).Before(v) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("capture did not reach %v in 60s (checkpoint %+v)", v, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// caughtUp waits until the sink group committed every partition's end.
func (f *fixture) caughtUp(ctx context.Context) {
	f.t.Helper()
	topic := envelope.Topic(f.prefix, f.ns)
	deadline := time.Now().Add(90 * time.Second)
	for {
		ends, err1 := f.adm.ListEndOffsets(ctx, topic)
		committed, err2 := f.adm.FetchOffsetsForTopics(ctx, f.group, topic)
		behind := int64(0)
		if err1 == nil && err2 == nil {
			ends.Each(func(e kadm.ListedOffset) {
				c := int64(0)
				if o, ok := committed.Lookup(topic, e.Partition); ok && o.At > 0 {
					c = o.At
				}
				// One offset left may be a transaction's commit marker.
				behind += max(0, e.Offset-c-1)
			})
			if behind == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the sink did not catch up in 90s (%d records behind, %v %v)", behind, err1, err2)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestIntegrationRoundWhileSinkBehind reproduces issue 17's false
// divergence and checks the caught-up rule end to end, with live writes:
//
//  1. The sink is paused for tens of seconds while capture runs: 180 rows
//     changed before the round (60 updates, 30 inserts and 30 deletes, two
//     tables) and more during it sit in Kafka. The round reports none of them
//     missing, stale, extra or different, and at least the 180 in flight.
//  2. Capture stopped (the pipeline behind at the source), changes made, and
//     while the round re-checks them a finished backfill's records (stamped
//     with a fresh cluster time, as capture's Backfill does) reach every
//     partition and are applied: the sink's newest applied version passes
//     every version the round read. The former rule took that for caught up
//     and called the unproduced inserts missing and the updates stale.
//
// After each, once the pipeline has caught up, a round is clean.
func TestIntegrationRoundWhileSinkBehind(t *testing.T) {
	const n, parts = 5000, 4
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	f.load(ctx, n)
	// A fresh second: nothing loaded shares the stream's start time.
	for sec := time.Now().Unix(); time.Now().Unix() == sec; {
		time.Sleep(20 * time.Millisecond)
	}
	stopCapture := f.startCapture(ctx, parts)
	f.startSinkOnly(ctx, parts)
	src, _ := newSource(f.mc, f.ns)
	topic := envelope.Topic(f.prefix, f.ns)

	// A first change applied, so that the partitions have an applied version
	// the lag is measured from.
	for id := int64(4900); id < 4910; id++ {
		if _, err := f.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(99)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	f.caughtUpAfterWrites(ctx, src)

	all := make([]sink.TopicPartition, parts)
	for p := range int32(parts) {
		all[p] = sink.TopicPartition{Topic: topic, Partition: p}
	}
	if err := checkpoints.PutJSON(ctx, f.store, sink.PausedKey, all); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the sink reads intents every second
	pausedAt := time.Now()

	// writes changes 60 users rows, and both rows of 30 inserted and 30
	// deleted documents: 180 rows, on _ids from base.
	writes := func(base, next int64) {
		t.Helper()
		for i := range int64(60) {
			if _, err := f.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: base + i}}, bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(5 + i%50)}}}}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range int64(30) {
			if _, err := f.coll.InsertOne(ctx, userDoc(next+i, int(i))); err != nil {
				t.Fatal(err)
			}
			if _, err := f.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: base + 60 + i}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	writes(0, n)
	v, _ := src.now(ctx)
	f.capturedPast(ctx, v)

	// Live updates during the round, on other _ids.
	live := func(lctx context.Context, from int64) (*atomic.Int64, func()) {
		var count atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := int64(0); lctx.Err() == nil; i++ {
				if _, err := f.coll.UpdateOne(lctx, bson.D{{Key: "_id", Value: from + i%500}}, bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(i % 90)}}}}); err == nil {
					count.Add(1)
				}
				select {
				case <-lctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
		return &count, wg.Wait
	}
	// Tens of seconds behind before the round starts.
	for time.Since(pausedAt) < 20*time.Second {
		time.Sleep(200 * time.Millisecond)
	}
	r := f.reconciler(Config{InFlightWait: 5 * time.Second})
	lctx, stopLive := context.WithCancel(ctx)
	during, wait := live(lctx, 2000)
	rep, err := r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Fresh: true})
	stopLive()
	wait()
	if err != nil {
		t.Fatal(err)
	}
	behind := 0.0
	for _, p := range rep.LagEnd {
		behind = max(behind, p.SecondsBehind)
	}
	t.Logf("round with the sink paused %.0fs (%.0fs behind at the end), %d live updates during it: %s, counts %v, waiting %v",
		time.Since(pausedAt).Seconds(), behind, during.Load(), rep.Status, rep.Counts, rep.InFlightWaiting)
	checkInFlight(t, rep, 180, 180+during.Load(), WaitSink)
	if behind < 20 {
		t.Errorf("the pipeline was %.0fs behind at the end of the round, want tens of seconds", behind)
	}
	// The sink was paused throughout: it committed nothing during the round.
	if len(rep.SinkStart) != parts || fmt.Sprint(rep.SinkStart) != fmt.Sprint(rep.SinkEnd) {
		t.Errorf("sink positions of a round with the sink paused: start %v, end %v", rep.SinkStart, rep.SinkEnd)
	}
	pausedEnd := rep.SinkEnd

	if err := f.store.Delete(ctx, sink.PausedKey); err != nil {
		t.Fatal(err)
	}
	f.caughtUpAfterWrites(ctx, src)
	rep, err = r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "clean" || rep.Counts["in_flight"] != 0 {
		t.Fatalf("after catch-up: %s, counts %v, sample %+v", rep.Status, rep.Counts, rep.Sample)
	}
	// Started after the sink applied what was held back: its sink_start is
	// past the paused round's on some partition and behind on none.
	moved := false
	for i, o := range rep.SinkStart {
		if o.Partition != pausedEnd[i].Partition || o.Offset < pausedEnd[i].Offset {
			t.Errorf("sink_start %v behind the paused round's sink_end %v", rep.SinkStart, pausedEnd)
		}
		moved = moved || o.Offset > pausedEnd[i].Offset
	}
	if !moved {
		t.Errorf("sink_start %v did not move past the paused round's %v", rep.SinkStart, pausedEnd)
	}

	// 2. Capture stopped: the changes stay in MongoDB.
	stopCapture()
	writes(200, n+100)
	lctx, stopLive = context.WithCancel(ctx)
	during, wait = live(lctx, 3000)
	var injected atomic.Bool
	var injectErr error
	rep, err = r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Fresh: true, OnProgress: func(p Progress) {
		if p.Phase != "recheck" || injected.Swap(true) {
			return
		}
		injectErr = f.injectBackfill(ctx, src, 4000, 40)
	}})
	stopLive()
	wait()
	if err != nil {
		t.Fatal(err)
	}
	if injectErr != nil || !injected.Load() {
		t.Fatalf("backfill records not injected during the re-check: %v", injectErr)
	}
	t.Logf("round with capture stopped and a backfill applied during its re-check: %s, counts %v, waiting %v", rep.Status, rep.Counts, rep.InFlightWaiting)
	checkInFlight(t, rep, 180, 180+during.Load(), WaitCapture)

	f.startCapture(ctx, parts)
	f.caughtUpAfterWrites(ctx, src)
	rep, err = r.Round(ctx, Scope{Namespace: f.ns}, RoundOptions{Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "clean" || rep.Counts["in_flight"] != 0 {
		t.Fatalf("after catch-up: %s, counts %v, sample %+v", rep.Status, rep.Counts, rep.Sample)
	}
}

func checkInFlight(t *testing.T, rep *Report, lo, hi int64, waiting string) {
	t.Helper()
	sum := int64(0)
	for _, n := range rep.InFlightWaiting {
		sum += n
	}
	if sum != rep.Counts["in_flight"] || rep.InFlightWaiting[waiting] < lo {
		t.Errorf("in flight by what it waits for: %v (in flight %d), want at least %d waiting for %s", rep.InFlightWaiting, rep.Counts["in_flight"], lo, waiting)
	}
	for _, c := range []string{ClassMissing, ClassStale, ClassExtra, ClassDifferent} {
		if rep.Counts[c] != 0 {
			t.Errorf("%d rows called %s while the pipeline had not applied them; sample %+v", rep.Counts[c], c, rep.Sample[:min(3, len(rep.Sample))])
		}
	}
	if got := rep.Counts["in_flight"]; got < lo || got > hi {
		t.Errorf("%d rows in flight, want %d..%d (the rows changed before the round, plus at most one per live update)", got, lo, hi)
	}
	if rep.Status != "clean" {
		t.Errorf("status %s, want clean (nothing divergent; in flight is not divergence)", rep.Status)
	}
}

// caughtUpAfterWrites waits until capture produced every change made so far
// and the sink applied it.
func (f *fixture) caughtUpAfterWrites(ctx context.Context, src *source) {
	f.t.Helper()
	v, err := src.now(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	f.capturedPast(ctx, v)
	f.caughtUp(ctx)
}

// injectBackfill produces, as capture's Backfill does, the current state of
// count documents from _id base, stamped just below a cluster time read now:
// the records of a finished backfill, which the running sink applies at once.
func (f *fixture) injectBackfill(ctx context.Context, src *source, base int64, count int) error {
	t0, err := src.now(ctx)
	if err != nil {
		return err
	}
	version := envelope.Below(envelope.Version{T: t0.T + 1})
	cl, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		return err
	}
	defer cl.Close()
	topic := envelope.Topic(f.prefix, f.ns)
	var recs []*kgo.Record
	for id := base; id < base+int64(count); id++ {
		var doc bson.Raw
		if err := f.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
			return err
		}
		e := envelope.Event{Op: envelope.OpBackfill, Namespace: f.ns, ID: doc.Lookup("_id"), Version: version, Doc: doc}
		val, err := envelope.Encode(nil, &e)
		if err != nil {
			return err
		}
		recs = append(recs, &kgo.Record{Topic: topic, Key: e.Key(), Value: val})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return err
	}
	// Applied: every partition's newest applied version passes the
	// versions the round read before.
	deadline := time.Now().Add(30 * time.Second)
	for p := range int32(4) {
		for f.sink.Applied(topic, p).Before(version) {
			if time.Now().After(deadline) {
				return fmt.Errorf("partition %d: the backfill records were not applied in 30s", p)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}
