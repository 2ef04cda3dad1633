package sink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
)

// recordingWriter keeps every batch it is given and, per table, the newest
// version written for each id, as the target would hold it. col is the row
// value holding the id.
type recordingWriter struct {
	col     int
	mu      sync.Mutex
	batches [][]Change
	rows    map[string]map[int64]int64 // table -> id -> version of the newest upsert
}

func newRecordingWriter(col int) *recordingWriter {
	return &recordingWriter{col: col, rows: map[string]map[int64]int64{}}
}

func (w *recordingWriter) Write(_ context.Context, t *transform.Table, cs []Change) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batches = append(w.batches, cs)
	byID := w.rows[t.Name]
	if byID == nil {
		byID = map[int64]int64{}
		w.rows[t.Name] = byID
	}
	for _, c := range cs {
		id := c.Row.Values[w.col].(int64)
		byID[id] = max(byID[id], c.Version)
	}
	return nil
}

func (w *recordingWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return fmt.Errorf("no key-map table in this spec")
}

// writeAll runs a sink over recs, in one partition, into w until every
// record is applied.
func writeAll(t *testing.T, recs []*kgo.Record, m *transform.Mapping, w Writer) {
	t.Helper()
	brokers := kfakeTopic(t, 1, recs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sk := newItemsSink(t, brokers, Config{Group: "g"}, w, m, nil)
	defer sk.Close()
	stop := runSink(ctx, sk)
	defer stop()
	waitApplied(t, ctx, sk, int64(len(recs)))
}

// TestSinkBatchesByCassandraPartition feeds 200 documents whose rows fall in
// two Cassandra partitions (bucket 0 and 1) and checks that every batch holds
// rows of one partition only, that batches really group (far fewer writes
// than rows), and that every document's newest version was written.
func TestSinkBatchesByCassandraPartition(t *testing.T) {
	const n = 200
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, itemRecord(t, int64(i%150), int32(i), uint32(i+1)))
	}
	w := newRecordingWriter(1)
	writeAll(t, recs, itemsMapping(t, 2), w)

	w.mu.Lock()
	defer w.mu.Unlock()
	rows := 0
	for _, b := range w.batches {
		rows += len(b)
		for _, c := range b[1:] {
			if c.Row.Values[0] != b[0].Row.Values[0] {
				t.Fatalf("a batch mixes partitions %v and %v", b[0].Row.Values[0], c.Row.Values[0])
			}
		}
	}
	if rows != n {
		t.Fatalf("%d rows written, want every one of %d", rows, n)
	}
	if len(w.batches) > n/10 {
		t.Fatalf("%d writes for %d rows in two partitions: rows were not grouped", len(w.batches), n)
	}
	for i := range 150 {
		newest := i + 1
		if i < n-150 {
			newest = i + 150 + 1
		}
		if got, want := w.rows["items"][int64(i)], (envelope.Version{T: 100, I: uint32(newest)}).Micros(); got != want {
			t.Fatalf("id %d: newest version written %d, want %d", i, got, want)
		}
	}
}

// blockingWriter holds every write until its context ends, like a Cassandra
// that stopped answering.
type blockingWriter struct{ started chan struct{} }

func (w *blockingWriter) Write(ctx context.Context, _ *transform.Table, _ []Change) error {
	select {
	case w.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

func (w *blockingWriter) ApplyMapped(ctx context.Context, t *transform.Table, _ *envelope.Event, _ *transform.Row) error {
	return w.Write(ctx, t, nil)
}

// TestSinkStopsWithWritesQueued stops the sink while every writer is stuck
// and more writes wait in the queue: Run must return, and nothing may be
// recorded as applied.
func TestSinkStopsWithWritesQueued(t *testing.T) {
	const partitions, perPartition = 4, 50
	var recs []*kgo.Record
	for i := range partitions * perPartition {
		r := itemRecord(t, int64(i), int32(i), uint32(i+1))
		r.Partition = int32(i % partitions)
		recs = append(recs, r)
	}
	brokers := kfakeTopic(t, partitions, recs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := itemsMapping(t, 0)
	w := &blockingWriter{started: make(chan struct{}, 1)}
	// Which of a worker's two ready cases Go picks is random: repeat.
	for i := range 5 {
		// Sixteen writes may be outstanding but only four run: the rest queue.
		sk := newItemsSink(t, brokers, Config{Group: fmt.Sprintf("g%d", i), Concurrency: 4, MaxInFlight: 4}, w, m, nil)
		sctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { sk.Run(sctx); close(done) }()
		select {
		case <-w.started:
		case <-ctx.Done():
			t.Fatal("no write started")
		}
		// Give the producers time to fill the queue behind the stuck writers.
		for deadline := time.Now().Add(2 * time.Second); len(sk.tasks) < cap(sk.tasks) && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		stop()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			// Not closed: leaving the group would wait for the stuck poll.
			t.Fatal("Run did not return after its context ended with writes queued")
		}
		sk.Close()
		for _, l := range sk.Lag() {
			if l.Committed > 0 {
				t.Fatalf("partition %d recorded %d as applied though no write was acknowledged", l.Partition, l.Committed)
			}
		}
	}
}

// slowingWriter is a slowTarget answering in 5 ms when not slow, as a
// Writer that keeps the ids it wrote.
type slowingWriter struct {
	slowTarget
	mu   sync.Mutex
	seen map[int64]bool
}

func (w *slowingWriter) Write(ctx context.Context, _ *transform.Table, cs []Change) error {
	if _, err := w.write(ctx); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cs {
		w.seen[c.Row.Values[0].(int64)] = true
	}
	return nil
}

func (w *slowingWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return fmt.Errorf("no key-map table in this spec")
}

// TestSinkThrottlesSlowTarget runs the whole sink against a target that slows
// down under load: the sink must lower its writes in flight far below
// max_in_flight while the target is slow, raise them again once it recovers,
// and still write every record.
func TestSinkThrottlesSlowTarget(t *testing.T) {
	const partitions, n = 4, 6000
	var recs []*kgo.Record
	for i := range n {
		r := itemRecord(t, int64(i), int32(i), uint32(i+1))
		r.Partition = int32(i % partitions)
		recs = append(recs, r)
	}
	brokers := kfakeTopic(t, partitions, recs)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The sink times writes by the wall clock, so on a loaded machine (and
	// under -race) a 5 ms write can take tens of milliseconds to be seen
	// done. The p99 bound sits well above that noise, and a slow write
	// costs 6 ms per write in flight, so the throttle still settles near ten.
	w := &slowingWriter{slowTarget: slowTarget{base: 5 * time.Millisecond, perWrite: 6 * time.Millisecond}, seen: map[int64]bool{}}
	w.slow.Store(true)
	sk := newItemsSink(t, brokers, Config{Group: "g", Concurrency: 64, MaxInFlight: 64,
		Throttle: ThrottleConfig{P99: 60 * time.Millisecond, Window: 100 * time.Millisecond}}, w, itemsMapping(t, 0), nil)
	defer sk.Close()
	stop := runSink(ctx, sk)
	defer stop()

	// Slow: the first window sees up to 64 in flight; the throttle must then
	// settle where p99 stays near 60 ms (about 10 in flight).
	for deadline := time.Now().Add(10 * time.Second); sk.lim.Limit() > 16; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("slow target: limit stayed at %d of 64", sk.lim.Limit())
		}
	}
	w.peak.Store(0)
	seen := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.seen)
	}
	// Over the next 200 writes nothing may exceed the lowered bound.
	for from, deadline := seen(), time.Now().Add(10*time.Second); seen() < from+200; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the slow target took no 200 writes in 10 s")
		}
	}
	slowPeak, slowLimit := w.peak.Load(), sk.lim.Limit()
	if slowPeak > 16 || slowLimit > 16 {
		t.Fatalf("slow target: %d writes in flight at once, limit %d; want at most 16 of the 64 allowed", slowPeak, slowLimit)
	}
	// Recovered: the limit grows back (by a tenth per window).
	w.slow.Store(false)
	for deadline := time.Now().Add(5 * time.Second); sk.lim.Limit() < 2*slowLimit+4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("recovered target: limit %d did not grow back from %d", sk.lim.Limit(), slowLimit)
		}
	}
	waitApplied(t, ctx, sk, n)
	if got := seen(); got != n {
		t.Fatalf("%d distinct rows written, want %d", got, n)
	}
}

// TestSinkWritesEveryTableOfANamespace maps each document to two tables, so
// that a chunk holds twice as many writes as records, and checks that every
// document reached both tables at its version.
func TestSinkWritesEveryTableOfANamespace(t *testing.T) {
	const n = 700 // more than a first chunk and a full one
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, itemRecord(t, int64(i), int32(i), uint32(i+1)))
	}
	w := newRecordingWriter(0)
	writeAll(t, recs, itemsMapping(t, 0, "items_copy"), w)

	w.mu.Lock()
	defer w.mu.Unlock()
	for _, table := range []string{"items", "items_copy"} {
		if got := len(w.rows[table]); got != n {
			t.Fatalf("%s holds %d ids, want %d", table, got, n)
		}
		for i := range n {
			if got, want := w.rows[table][int64(i)], (envelope.Version{T: 100, I: uint32(i + 1)}).Micros(); got != want {
				t.Fatalf("%s id %d: version %d, want %d", table, i, got, want)
			}
		}
	}
}
