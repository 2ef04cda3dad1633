package reconcile

import (
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestQuietEnough(t *testing.T) {
	l := &PipelineLag{Settle: 30 * time.Millisecond}
	if !l.quietEnough("t", 0, 10, 10) || !l.quietEnough("t", 0, 11, 10) {
		t.Fatal("nothing left must be caught up")
	}
	if l.quietEnough("t", 0, 8, 10) {
		t.Fatal("two offsets left is behind")
	}
	// One offset left: a commit marker once it stays put for Settle.
	if l.quietEnough("t", 1, 9, 10) {
		t.Fatal("one offset left counted at once")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !l.quietEnough("t", 1, 9, 10) {
		if time.Now().After(deadline) {
			t.Fatal("a quiet partition never settled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The sink moved: the clock starts again.
	if l.quietEnough("t", 1, 10, 11) {
		t.Fatal("a moving partition counted as settled")
	}
}

func TestCaptureCaughtFromTheCheckpoint(t *testing.T) {
	ctx := t.Context()
	st := checkpointstest.New()
	l := &PipelineLag{Store: st}
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 1}); ok || err != nil {
		t.Fatalf("no stream checkpoint: %v %v", ok, err)
	}
	// Not streamed yet: everything strictly before the start is covered.
	checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+"app.users", streamCheckpoint{StartT: 100})
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 99, I: 5_000_000}); !ok || err != nil {
		t.Fatalf("before the start: %v %v", ok, err)
	}
	// At the start and later the oplog must say whether anything is newer;
	// without a MongoDB client that is an error, never a yes.
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 100}); ok || err == nil {
		t.Fatalf("at the start without an oplog: %v %v", ok, err)
	}
	// Streamed: everything up to the last produced event is covered.
	checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+"app.users", streamCheckpoint{StartT: 100, Token: []byte{1}, T: 200, I: 3})
	for v, want := range map[envelope.Version]bool{{T: 200, I: 3}: true, {T: 150}: true} {
		if ok, err := l.captureCaught(ctx, "app.users", v); ok != want || err != nil {
			t.Errorf("%v: %v %v", v, ok, err)
		}
	}
}

func TestPartitionOfIsStable(t *testing.T) {
	key := envelope.Key(mustRaw(t, int64(42)))
	p := PartitionOf("topic", key, 12)
	for range 10 {
		if PartitionOf("topic", key, 12) != p {
			t.Fatal("the same key went to another partition")
		}
	}
	if p < 0 || p >= 12 {
		t.Fatalf("partition %d of 12", p)
	}
}

// TestCaughtUpRule: a key read at version v is caught up only when no
// backfill of its namespace is pending, capture's checkpoint covers v, and
// the sink group has committed past the end offset of the key's partition
// pinned once both held — not a later end (that would chase a moving
// target under load), and never because the sink applied some newer
// version on the partition (a backfill's records carry a fresh T0 ahead of
// older live changes).
func TestCaughtUpRule(t *testing.T) {
	ctx := t.Context()
	const ns, prefix, group = "app.users", "tm", "sink"
	topic := envelope.Topic(prefix, ns)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	st := checkpointstest.New()
	l := &PipelineLag{Store: st, Admin: adm, Group: group, TopicPrefix: prefix,
		// A partition that applied a far newer version must not count.
		Applied: func(string, int32) envelope.Version { return envelope.Version{T: 1 << 30} }}
	key := envelope.Key(mustRaw(t, int64(42)))
	p := PartitionOf(topic, key, 4)
	produce := func(n int) {
		t.Helper()
		for range n {
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: p, Key: key, Value: []byte("x")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	commit := func(at int64) {
		t.Helper()
		var o kadm.Offsets
		o.Add(kadm.Offset{Topic: topic, Partition: p, At: at, LeaderEpoch: -1})
		if _, err := adm.CommitOffsets(ctx, group, o); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // past the offsets cache
	}
	caught := func(v envelope.Version, w *Watermark) bool {
		t.Helper()
		ok, err := l.Caught(ctx, ns, [][]byte{key}, v, w)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	v := envelope.Version{T: 150}
	var w Watermark

	// (b) no stream checkpoint: capture's progress is unknown.
	if caught(v, &w) || w.Waiting != WaitCapture {
		t.Fatalf("caught up without a capture checkpoint (waiting %q)", w.Waiting)
	}
	checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+ns, streamCheckpoint{StartT: 100, Token: []byte{1}, T: 200})
	// (a) a targeted backfill of the namespace waits.
	reqKey, err := capture.Enqueue(ctx, st, capture.Request{Namespace: ns, Reason: "widened slice"})
	if err != nil {
		t.Fatal(err)
	}
	produce(5)
	time.Sleep(300 * time.Millisecond) // past the backfill cache
	if caught(v, &w) || w.Ends != nil || w.Waiting != WaitBackfill {
		t.Fatalf("caught up (or pinned %v, waiting %q) while a backfill was pending", w.Ends, w.Waiting)
	}
	st.Delete(ctx, reqKey)
	// A repair of this key waits: pending for it, not for another key.
	reqKey, _ = capture.Enqueue(ctx, st, capture.Request{Namespace: ns, Keys: [][]byte{key}, Reason: "repair"})
	time.Sleep(300 * time.Millisecond)
	if pending, _ := l.backfillPending(ctx, ns, [][]byte{key}); !pending {
		t.Fatal("a repair of the key is not pending for it")
	}
	if pending, _ := l.backfillPending(ctx, ns, [][]byte{envelope.Key(mustRaw(t, int64(7)))}); pending {
		t.Fatal("a repair of another key holds this one")
	}
	st.Delete(ctx, reqKey)
	time.Sleep(300 * time.Millisecond) // past the backfill cache
	// (c) pinned at the end offset now: 5.
	if caught(v, &w) || w.Ends[p] != 5 || w.Waiting != WaitSink {
		t.Fatalf("caught up with nothing committed, or pinned %v (waiting %q)", w.Ends, w.Waiting)
	}
	produce(3)
	commit(4)
	if caught(v, &w) {
		t.Fatal("caught up with the sink short of the pinned end")
	}
	commit(5)
	if !caught(v, &w) || w.Waiting != "" {
		t.Fatalf("not caught up once the sink passed the pinned end %v (end now 8; waiting %q)", w.Ends, w.Waiting)
	}
	// A new version read starts over and pins the end of that moment.
	v2 := envelope.Version{T: 160}
	if caught(v2, &w) || w.Ends[p] != 8 {
		t.Fatalf("a new version kept the old pin: %v", w.Ends)
	}
	// The initial backfill not done: pending too.
	checkpoints.PutJSON(ctx, st, "backfill/"+ns, capture.Progress{Namespace: ns})
	time.Sleep(300 * time.Millisecond)
	commit(8)
	var w3 Watermark
	if caught(envelope.Version{T: 170}, &w3) {
		t.Fatal("caught up while the initial backfill runs")
	}
}

// TestChangedBetweenCache: under load capture's position moves with every
// batch; an answer about an earlier position must serve later ones (else
// every re-check opens a change stream), and only where it still holds.
func TestChangedBetweenCache(t *testing.T) {
	ctx := t.Context()
	ver := func(t uint32) envelope.Version { return envelope.Version{T: t} }
	l := &PipelineLag{} // no MongoDB: a cache miss is an error
	l.probes = map[string]probeEntry{"a.b": {after: ver(10), quietTo: ver(20), changeAt: ver(21), at: time.Now()}}
	for _, tc := range []struct {
		from, v uint32
		changed bool
	}{
		{10, 20, false}, // the answer itself
		{15, 18, false}, // capture moved on: still nothing up to 20
		{15, 25, true},  // the change at 21 is ahead of capture
		{22, 25, true},  // capture passed it; unknown, but asked < 250 ms ago
	} {
		changed, err := l.changedBetween(ctx, "a.b", ver(tc.from), ver(tc.v))
		if err != nil || changed != tc.changed {
			t.Errorf("from %d to %d: changed %v (%v), want %v", tc.from, tc.v, changed, err, tc.changed)
		}
	}
	// An old answer that does not decide, or capture moved back: ask again.
	l.probes["a.b"] = probeEntry{after: ver(10), quietTo: ver(20), changeAt: ver(21), at: time.Now().Add(-time.Second)}
	for _, from := range []uint32{22, 5} {
		if _, err := l.changedBetween(ctx, "a.b", ver(from), ver(25)); err == nil {
			t.Errorf("from %d: answered from the cache", from)
		}
	}
}
