package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// pickyWriter refuses some ids as invalid, times out on others as many times
// as timesOut says, and keeps what it accepted. Rows are [bucket, id, v].
type pickyWriter struct {
	rejected map[int64]bool
	timesOut map[int64]int
	mu       sync.Mutex
	written  map[int64]bool
	refused  []int // sizes of the writes refused as invalid
}

func (w *pickyWriter) Write(_ context.Context, _ *transform.Table, cs []Change) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cs {
		id := c.Row.Values[1].(int64)
		if w.rejected[id] {
			w.refused = append(w.refused, len(cs))
			return fmt.Errorf("sink: write: %w: Key may not be empty", ErrRejected)
		}
		if w.timesOut[id] > 0 {
			w.timesOut[id]--
			return errors.New("sink: write: Operation timed out - received only 0 responses")
		}
	}
	for _, c := range cs {
		w.written[c.Row.Values[1].(int64)] = true
	}
	return nil
}

func (w *pickyWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return errors.New("no key-map table in this spec")
}

// runPicky runs a sink with w over recs on one partition of a table with
// buckets Cassandra partitions until it has moved past every record, and
// returns its metrics and the dead letters, by offset.
func runPicky(t *testing.T, buckets int, recs []*kgo.Record, w *pickyWriter) (*prometheus.Registry, []envelope.DeadLetter) {
	t.Helper()
	brokers := kfakeTopic(t, 1, recs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	sk := newItemsSink(t, brokers, Config{Group: "g", Retries: 2, RetryBackoff: time.Millisecond}, w, itemsMapping(t, buckets), reg)
	defer sk.Close()
	stop := runSink(ctx, sk)
	defer stop()
	waitApplied(t, ctx, sk, int64(len(recs)))
	dead := readDeadLetters(t, ctx, brokers, "tidemark")
	slices.SortFunc(dead, func(a, b envelope.DeadLetter) int { return int(a.Offset - b.Offset) })
	return reg, dead
}

// TestSinkDeadLettersAndMovesOn feeds a malformed record, a document the
// transform refuses and a row the target rejects among good ones, one of
// which times out more often than sink.retries: each bad record is in the
// dead-letter topic with its stage, a reason and its offset, exactly once;
// the timed-out row is retried until written, never dead-lettered (a
// timeout is Cassandra's state, not the record's fault); every good row is
// written; the partition moves past all of them; and the counters agree.
func TestSinkDeadLettersAndMovesOn(t *testing.T) {
	var recs []*kgo.Record
	for i := range 10 {
		r := itemRecord(t, int64(i), int32(i), uint32(i+1))
		switch i {
		case 3:
			r.Value = []byte("not an envelope")
		case 5:
			r = itemRecord(t, int64(i), "five", uint32(i+1)) // v must be an int
		}
		r.Key = fmt.Appendf(nil, "k%d", i)
		recs = append(recs, r)
	}
	w := &pickyWriter{rejected: map[int64]bool{7: true}, timesOut: map[int64]int{8: 4}, written: map[int64]bool{}}
	// With 1,000 buckets these ten rows are written one by one.
	reg, dead := runPicky(t, 1000, recs, w)

	want := []struct {
		offset       int64
		stage, cause string
	}{
		{3, "sink", "malformed record"},
		{5, "transform", "cannot convert string"},
		{7, "sink", "rejected by the target"},
	}
	if len(dead) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dead), len(want), dead)
	}
	for i, wl := range want {
		d := dead[i]
		if d.Offset != wl.offset || d.Stage != wl.stage || !strings.Contains(d.Reason, wl.cause) {
			t.Errorf("dead letter %d: offset %d, stage %q, reason %q; want offset %d, stage %q, a reason naming %q",
				i, d.Offset, d.Stage, d.Reason, wl.offset, wl.stage, wl.cause)
		}
		if d.Topic != itemsTopic || string(d.Record) != string(recs[wl.offset].Value) || string(d.Key) != string(recs[wl.offset].Key) {
			t.Errorf("dead letter %d does not carry the original record: topic %q key %q", i, d.Topic, d.Key)
		}
	}
	for _, id := range []int64{0, 1, 2, 4, 6, 8, 9} {
		if !w.written[id] {
			t.Errorf("good row %d was not written", id)
		}
	}
	if len(w.written) != 7 {
		t.Errorf("%d rows written, want the 7 good ones", len(w.written))
	}
	if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", "sink"); got != 2 {
		t.Errorf("sink dead letters counted %v, want 2", got)
	}
	if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", "transform"); got != 1 {
		t.Errorf("transform dead letters counted %v, want 1", got)
	}
	// The timeout is retried four times, past sink.retries (2); the rejected
	// row is not retried at all.
	if got := counterValue(t, reg, "tidemark_sink_retries_total", ""); got != 4 {
		t.Errorf("retries counted %v, want 4 (the timed-out row's; a rejected row is not retried)", got)
	}
}

// TestSinkSplitsRejectedBatch puts one row the target rejects in a batch with
// 49 good rows of the same Cassandra partition: only that row may go to the
// dead-letter topic.
func TestSinkSplitsRejectedBatch(t *testing.T) {
	var recs []*kgo.Record
	for i := range 50 {
		recs = append(recs, itemRecord(t, int64(i), int32(i), uint32(i+1)))
	}
	w := &pickyWriter{rejected: map[int64]bool{13: true}, written: map[int64]bool{}}
	_, dead := runPicky(t, 1, recs, w)
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
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, itemRecord(t, int64(i), int32(i), uint32(i+1)))
	}
	brokers := kfakeTopic(t, 1, recs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	sk := newItemsSink(t, brokers, Config{Group: "g", RetryBackoff: time.Millisecond}, brokenWriter{}, itemsMapping(t, 0), reg)
	defer sk.Close()
	err := sk.Run(ctx)
	checkStoppedOnBrokenTarget(t, err, sk.Lag(), reg)
}

// TestSinkDeadLettersARecordOnAnotherNamespacesTopic: a record whose
// namespace is not its topic's (written by something other than capture) is
// dead-lettered with both names, not applied to the other collection's
// tables; the records around it are written.
func TestSinkDeadLettersARecordOnAnotherNamespacesTopic(t *testing.T) {
	var recs []*kgo.Record
	for i := range 3 {
		recs = append(recs, itemRecord(t, int64(i), int32(i), uint32(i+1)))
	}
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: int64(7)}, {Key: "v", Value: int32(7)}})
	if err != nil {
		t.Fatal(err)
	}
	ev := envelope.Event{Op: envelope.OpInsert, Namespace: "app.other", ID: bson.Raw(doc).Lookup("_id"),
		Version: envelope.Version{T: 100, I: 9}, Doc: doc}
	b, err := envelope.Encode(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	recs = append(recs[:1], append([]*kgo.Record{{Topic: itemsTopic, Key: ev.Key(), Value: b}}, recs[1:]...)...)
	w := &pickyWriter{written: map[int64]bool{}}
	_, dead := runPicky(t, 1000, recs, w)
	if len(dead) != 1 || dead[0].Offset != 1 || dead[0].Namespace != "app.other" ||
		!strings.Contains(dead[0].Reason, "namespace mismatch") || !strings.Contains(dead[0].Reason, itemsTopic) {
		t.Fatalf("dead letters %+v", dead)
	}
	if len(w.written) != 3 || w.written[7] {
		t.Fatalf("rows written %v, want ids 0, 1, 2 only", w.written)
	}
}
