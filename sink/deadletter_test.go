package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// pickyWriter refuses some ids as invalid, times out on others for ever,
// and keeps what it accepted.
type pickyWriter struct {
	rejected, timesOut map[int64]bool
	mu                 sync.Mutex
	written            map[int64]bool
	refused            []int // sizes of the writes refused as invalid
}

func (w *pickyWriter) Write(_ context.Context, _ *transform.Table, cs []Change) error {
	for _, c := range cs {
		id := c.Row.Values[1].(int64)
		if w.rejected[id] {
			w.mu.Lock()
			w.refused = append(w.refused, len(cs))
			w.mu.Unlock()
			return fmt.Errorf("sink: write: %w: Key may not be empty", ErrRejected)
		}
		if w.timesOut[id] {
			return errors.New("sink: write: Operation timed out - received only 0 responses")
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cs {
		w.written[c.Row.Values[1].(int64)] = true
	}
	return nil
}

func (w *pickyWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return errors.New("no key-map table in this spec")
}

// deadLetterFixture runs a sink with a picky writer over records made by
// value(i) for i in [0, n), on one partition, until it has applied them all.
func deadLetterFixture(t *testing.T, buckets, n int, value func(t *testing.T, i int) []byte, w *pickyWriter) (*prometheus.Registry, []envelope.DeadLetter, []*kgo.Record) {
	t.Helper()
	m, err := transform.Parse(fmt.Appendf(nil, `
version: "t1"
collections:
  - namespace: app.items
    tables:
      - keyspace: app
        table: items
        partition_key: [bucket]
        clustering_key: [id]
        columns:
          - {name: bucket, type: int, compute: hash_bucket, args: [_id], buckets: %d}
          - {name: id, type: bigint, from: _id}
          - {name: v, type: int, from: v}
`, buckets))
	if err != nil {
		t.Fatal(err)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "tidemark.app.items"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	brokers := kgo.SeedBrokers(c.ListenAddrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, &kgo.Record{Topic: "tidemark.app.items", Key: fmt.Appendf(nil, "k%d", i), Value: value(t, i)})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sk, err := New(Config{Group: "g", Retries: 2, RetryBackoff: time.Millisecond},
		Deps{KafkaOpts: []kgo.Opt{brokers}, Writer: w, Mapping: m, Store: checkpointstest.New(),
			Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { sk.Run(sctx); close(done) }()
	defer func() { stop(); <-done }()
	for {
		if l := sk.Lag(); len(l) == 1 && l[0].Committed == int64(n) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the sink did not move past every record: %+v", sk.Lag())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Every dead letter was produced before its offset counted as applied,
	// so a reader started now sees them all.
	rd, err := kgo.NewClient(brokers, kgo.ConsumeTopics(envelope.DeadLetterTopic("tidemark")))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var dead []envelope.DeadLetter
	for {
		fs := rd.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			d, err := envelope.DecodeDeadLetter(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			dead = append(dead, d)
		})
		hw := int64(-1)
		fs.EachPartition(func(p kgo.FetchTopicPartition) { hw = p.HighWatermark })
		if hw >= 0 && int64(len(dead)) >= hw {
			break
		}
	}
	slices.SortFunc(dead, func(a, b envelope.DeadLetter) int { return int(a.Offset - b.Offset) })
	return reg, dead, recs
}

func itemRecord(t *testing.T, id int64, v any) []byte {
	t.Helper()
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: id}, {Key: "v", Value: v}})
	if err != nil {
		t.Fatal(err)
	}
	ev := envelope.Event{Op: envelope.OpInsert, Namespace: "app.items", ID: bson.Raw(doc).Lookup("_id"),
		Version: envelope.Version{T: 100, I: uint32(id + 1)}, Doc: doc}
	b, err := envelope.Encode(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSinkDeadLettersAndMovesOn feeds a malformed record, a document the
// transform refuses, a row the target rejects and a row whose writes time
// out for ever, among good ones: each bad record is in the dead-letter topic
// with its stage, a reason and its offset, exactly once; every good row is
// written; the partition moves past all of them; and the counters agree.
func TestSinkDeadLettersAndMovesOn(t *testing.T) {
	w := &pickyWriter{rejected: map[int64]bool{7: true}, timesOut: map[int64]bool{8: true}, written: map[int64]bool{}}
	// One bucket per row would batch nothing: 1,000 buckets keep these ten apart.
	reg, dead, recs := deadLetterFixture(t, 1000, 10, func(t *testing.T, i int) []byte {
		switch i {
		case 3:
			return []byte("not an envelope")
		case 5:
			return itemRecord(t, int64(i), "five") // v must be an int
		}
		return itemRecord(t, int64(i), int32(i))
	}, w)

	want := []struct {
		offset       int64
		stage, cause string
	}{
		{3, "sink", "malformed record"},
		{5, "transform", "cannot convert string"},
		{7, "sink", "rejected by the target"},
		{8, "sink", "timed out"},
	}
	if len(dead) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v; written %v", len(dead), len(want), dead, w.written)
	}
	for i, wl := range want {
		d := dead[i]
		if d.Offset != wl.offset || d.Stage != wl.stage || !strings.Contains(d.Reason, wl.cause) {
			t.Errorf("dead letter %d: offset %d, stage %q, reason %q; want offset %d, stage %q, a reason naming %q",
				i, d.Offset, d.Stage, d.Reason, wl.offset, wl.stage, wl.cause)
		}
		if d.Topic != "tidemark.app.items" || string(d.Record) != string(recs[wl.offset].Value) || string(d.Key) != string(recs[wl.offset].Key) {
			t.Errorf("dead letter %d does not carry the original record: topic %q key %q", i, d.Topic, d.Key)
		}
	}
	for _, id := range []int64{0, 1, 2, 4, 6, 9} {
		if !w.written[id] {
			t.Errorf("good row %d was not written", id)
		}
	}
	if len(w.written) != 6 {
		t.Errorf("%d rows written, want the 6 good ones", len(w.written))
	}
	if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", "sink"); got != 3 {
		t.Errorf("sink dead letters counted %v, want 3", got)
	}
	if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", "transform"); got != 1 {
		t.Errorf("transform dead letters counted %v, want 1", got)
	}
	// The timeout is retried twice; the rejected row is not retried at all.
	if got := counterValue(t, reg, "tidemark_sink_retries_total", ""); got != 2 {
		t.Errorf("retries counted %v, want 2 (the timed-out row's; a rejected row is not retried)", got)
	}
}

// TestSinkSplitsRejectedBatch puts one row the target rejects in a batch with
// 49 good rows of the same Cassandra partition: only that row may go to the
// dead-letter topic.
func TestSinkSplitsRejectedBatch(t *testing.T) {
	w := &pickyWriter{rejected: map[int64]bool{13: true}, written: map[int64]bool{}}
	_, dead, _ := deadLetterFixture(t, 1, 50, func(t *testing.T, i int) []byte { return itemRecord(t, int64(i), int32(i)) }, w)
	if len(dead) != 1 || dead[0].Offset != 13 || !strings.Contains(dead[0].Reason, "rejected") {
		t.Fatalf("dead letters %+v, want only offset 13, rejected", dead)
	}
	if len(w.written) != 49 || w.written[13] {
		t.Fatalf("%d rows written (13 among them: %v), want the 49 others", len(w.written), w.written[13])
	}
	// The whole batch was refused once, then row 13 alone.
	if !slices.Equal(w.refused, []int{50, 1}) {
		t.Fatalf("writes refused, by size: %v; want the batch of 50, then row 13 alone", w.refused)
	}
}

// counterValue reads one series of a registered counter (label value "" for
// an unlabelled counter).
func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%s}", name, label)
	return 0
}

// brokenWriter stands in for a target whose table was dropped.
type brokenWriter struct{}

func (brokenWriter) Write(context.Context, *transform.Table, []Change) error {
	return fmt.Errorf("sink: write app.items: %w: table items does not exist", ErrTargetBroken)
}

func (brokenWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return errors.New("no key-map table in this spec")
}

// TestSinkStopsWhenTheTargetIsBroken: when no write can succeed (the table is
// gone), the sink stops with the cause instead of dead-lettering every
// record, and records nothing as applied.
func TestSinkStopsWhenTheTargetIsBroken(t *testing.T) {
	m, err := transform.Parse([]byte(`
version: "t1"
collections:
  - namespace: app.items
    tables:
      - keyspace: app
        table: items
        partition_key: [id]
        columns:
          - {name: id, type: bigint, from: _id}
          - {name: v, type: int, from: v}
`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "tidemark.app.items"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := kgo.SeedBrokers(c.ListenAddrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 10 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "tidemark.app.items", Value: itemRecord(t, int64(i), int32(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	sk, err := New(Config{Group: "g", RetryBackoff: time.Millisecond}, Deps{KafkaOpts: []kgo.Opt{brokers}, Writer: brokenWriter{}, Mapping: m,
		Store: checkpointstest.New(), Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	err = sk.Run(ctx)
	if !errors.Is(err, ErrTargetBroken) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Run returned %v, want the broken target's error", err)
	}
	for _, l := range sk.Lag() {
		if l.Committed > 0 {
			t.Fatalf("partition %d recorded %d as applied though no write succeeded", l.Partition, l.Committed)
		}
	}
	if got := counterValue(t, reg, "tidemark_sink_retries_total", ""); got != 0 {
		t.Fatalf("%v retries of a write no retry can fix", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tidemark_sink_dead_letters_total" && len(mf.GetMetric()) > 0 {
			t.Fatalf("records were dead-lettered: %v", mf.GetMetric())
		}
	}
}
