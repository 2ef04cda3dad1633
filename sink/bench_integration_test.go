//go:build integration

package sink

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
	"golang.org/x/time/rate"
)

// benchInFlight is the concurrency both the sink and the baseline get.
const benchInFlight = 64

// singleTableMapping is examples/specs/users.yaml with only the users table,
// whose key comes from _id: the rows a plain loop can write without knowing
// anything of the key map that users_by_email needs.
func singleTableMapping(b *testing.B, s *gocql.Session, ns, ks string) *transform.Mapping {
	_, text := testbed.UsersMapping(b, s, ns, ks)
	cut := strings.Index(text, "table: users_by_email")
	cut = strings.LastIndex(text[:cut], "- keyspace:")
	m, err := transform.Parse([]byte(text[:cut]))
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// benchTopic is a 6-partition capture topic holding the inserts of n users,
// and a keyspace with the users table (singleTableMapping).
type benchTopic struct {
	s          *gocql.Session
	brokers    []string
	m          *transform.Mapping
	ns, prefix string
	docs       []bson.Raw
	versions   []envelope.Version
}

func newBenchTopic(b *testing.B, n int) *benchTopic {
	b.Helper()
	bt := &benchTopic{s: testbed.Cassandra(b), brokers: testbed.Kafka(b), ns: testbed.UniqueName(b, "bench") + ".users", prefix: testbed.UniqueName(b, "bench")}
	bt.m = singleTableMapping(b, bt.s, bt.ns, testbed.UniqueName(b, "ks"))
	topic := bt.prefix + "." + bt.ns
	testbed.CreateTopic(b, testbed.KafkaAdmin(b), topic, 6)
	recs := make([]*kgo.Record, n)
	for i := range recs {
		doc, err := bson.Marshal(userDoc(int64(i), fmt.Sprintf("u%d@x.org", i), i, true))
		if err != nil {
			b.Fatal(err)
		}
		ev := envelope.Event{Op: envelope.OpInsert, Namespace: bt.ns, ID: bson.Raw(doc).Lookup("_id"),
			Version: envelope.Version{T: 1_700_000_000, I: uint32(i + 1)}, Doc: doc}
		v, err := envelope.Encode(nil, &ev)
		if err != nil {
			b.Fatal(err)
		}
		recs[i] = &kgo.Record{Topic: topic, Key: ev.Key(), Value: v}
		bt.docs, bt.versions = append(bt.docs, doc), append(bt.versions, ev.Version)
	}
	pcl, err := kgo.NewClient(kgo.SeedBrokers(bt.brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer pcl.Close()
	if err := pcl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		b.Fatal(err)
	}
	return bt
}

// plainWrites is the baseline the sink benchmarks compare with: the rows,
// already transformed, written with stmt (the sink's own INSERT ... USING
// TIMESTAMP) from benchInFlight goroutines at consistency ONE. It returns
// rows per second.
func plainWrites(b *testing.B, s *gocql.Session, stmt string, rows []transform.Row, versions []int64) float64 {
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int, benchInFlight)
	var failed sync.Once
	for range benchInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				args := append(append(make([]any, 0, len(rows[i].Values)+1), rows[i].Values...), versions[i])
				if err := s.Query(stmt, args...).Consistency(gocql.One).Idempotent(true).Exec(); err != nil {
					failed.Do(func() { b.Errorf("baseline write: %v", err) })
				}
			}
		}()
	}
	for i := range rows {
		next <- i
	}
	close(next)
	wg.Wait()
	return float64(len(rows)) / time.Since(start).Seconds()
}

// BenchmarkSink measures rows/s from a Kafka topic into the local Cassandra
// through the sink (fetch, decode, transform, throttle, write, commit), next
// to the practical ceiling: a plain gocql loop with the same concurrency
// writing the same, already transformed rows with the same statement, in the
// same run.
func BenchmarkSink(b *testing.B) {
	const n = 20_000
	bt := newBenchTopic(b, n)
	s, brokers, m, ns, prefix := bt.s, bt.brokers, bt.m, bt.ns, bt.prefix
	ctx := context.Background()
	rows := make([]transform.Row, n)
	versions := make([]int64, n)
	for i, doc := range bt.docs {
		r, err := m.Apply(ns, doc)
		if err != nil || len(r) != 1 {
			b.Fatalf("transform: %v", err)
		}
		rows[i], versions[i] = r[0], bt.versions[i].Micros()
	}

	// Baseline: the same INSERT the sink prepares, from benchInFlight
	// goroutines. It runs before and after the sink and the better run counts,
	// so that neither warm-up nor compaction flatters the sink.
	table := m.Tables(ns)[0]
	stmt := newStatements(table).insert
	var plainCPU, sinkCPU testbed.CPU
	plainLoop := func() float64 {
		used := testbed.CPUNow()
		defer used.AddSince(&plainCPU)
		return plainWrites(b, s, stmt, rows, versions)
	}
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		b.Fatal(err)
	}
	// One sink pass: a fresh group reads the whole topic again.
	sinkPass := func() float64 {
		store, _ := checkpoints.OpenFile(b.TempDir())
		sk, err := New(Config{Group: testbed.UniqueName(b, "g"), TopicPrefix: prefix, Concurrency: benchInFlight, MaxInFlight: benchInFlight},
			Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(brokers...)}, Writer: w, Mapping: m, Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer sk.Close()
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		go sk.Run(sctx)
		// The clock starts once the first fetch arrived: joining the group
		// and finding its offsets are a one-off cost of starting, not of
		// writing, as building the rows in memory is for the plain loop.
		// Every later fetch is timed.
		for deadline := time.Now().Add(time.Minute); !slices.ContainsFunc(sk.Lag(), func(l PartitionLag) bool { return l.End > 0 }); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the sink fetched nothing in a minute")
			}
		}
		start, used := time.Now(), testbed.CPUNow()
		for applied := int64(0); applied < n; {
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("sink applied %d of %d records in 5 minutes", applied, n)
			}
			time.Sleep(5 * time.Millisecond)
			applied = 0
			for _, l := range sk.Lag() {
				applied += max(0, l.Committed)
			}
		}
		used.AddSince(&sinkCPU)
		return float64(n) / time.Since(start).Seconds()
	}
	// On two shared cores one pass of either swings by a quarter and the
	// stack slows as the run goes on (flushes, compaction), so the two
	// alternate, each sink pass is compared with the plain passes on either
	// side of it, and the median of those ratios is the result: neither
	// warm-up, nor compaction, nor a neighbour's burst lands on one side only.
	b.ResetTimer()
	const rounds = 5
	var baselines, rates []float64
	for range rounds {
		// Labelled so that a -cpuprofile can be split by side (-tagfocus).
		pprof.Do(ctx, pprof.Labels("side", "plain"), func(context.Context) { baselines = append(baselines, plainLoop()) })
		pprof.Do(ctx, pprof.Labels("side", "sink"), func(context.Context) { rates = append(rates, sinkPass()) })
	}
	baselines = append(baselines, plainLoop())
	ratios := testbed.NeighbourRatios(rates, baselines)
	b.Logf("sink passes %.0f rows/s, plain loop passes %.0f rows/s, ratios %.3f", rates, baselines, ratios)
	// The client and the servers share two cores: the stack is CPU-bound, and
	// the ratio follows the CPU each side costs per row, its own and the
	// servers'. Measured over the timed part of each pass only.
	per := func(d time.Duration, passes int) float64 { return float64(d.Microseconds()) / float64(passes*n) }
	b.Logf("CPU per row, sink passes: client %.1fµs, Cassandra %.1fµs, Kafka %.1fµs; plain passes: client %.1fµs, Cassandra %.1fµs, Kafka %.1fµs",
		per(sinkCPU.Client, rounds), per(sinkCPU.Cassandra, rounds), per(sinkCPU.Kafka, rounds),
		per(plainCPU.Client, rounds+1), per(plainCPU.Cassandra, rounds+1), per(plainCPU.Kafka, rounds+1))
	b.ReportMetric(testbed.Median(rates), "sink_rows/s")
	b.ReportMetric(testbed.Median(baselines), "baseline_gocql_loop_rows/s")
	b.ReportMetric(testbed.Median(ratios), "of-baseline")
}

// stampedWriter records, for every users row Cassandra acknowledged, the time
// since the document was written to MongoDB (the workload stamps "created").
type stampedWriter struct {
	Writer
	col  int
	mu   sync.Mutex
	lats []time.Duration
}

func (w *stampedWriter) Write(ctx context.Context, t *transform.Table, cs []Change) error {
	err := w.Writer.Write(ctx, t, cs)
	if err != nil || t.Name != "users" {
		return err
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cs {
		if c.Row == nil {
			continue
		}
		if at, ok := c.Row.Values[w.col].(time.Time); ok {
			w.lats = append(w.lats, now.Sub(at))
		}
	}
	return nil
}

// BenchmarkEndToEnd drives a steady 2,000 changes/s (inserts, updates and
// deletes) into MongoDB for 15 s with capture and the sink running, and
// reports the latency from each MongoDB write to Cassandra's acknowledgement
// of the row, p50 and p99.
func BenchmarkEndToEnd(b *testing.B) {
	const target, duration, writers = 2000, 15 * time.Second, 128
	s := testbed.Cassandra(b)
	mc := testbed.Mongo(b)
	brokers := testbed.Kafka(b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db := testbed.UniqueName(b, "e2e")
	ns := db + ".users"
	coll := mc.Database(db).Collection("users")
	b.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	m, _ := testbed.UsersMapping(b, s, ns, testbed.UniqueName(b, "ks"))
	store, _ := checkpoints.OpenFile(b.TempDir())
	prefix := testbed.UniqueName(b, "e2e")
	kopts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	quiet := slog.New(slog.DiscardHandler)
	cp, err := capture.New(capture.Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6,
		UpdateLookup: "capture", Backfill: capture.BackfillConfig{Enabled: new(bool)}}, capture.Deps{Mongo: mc, KafkaOpts: kopts, Store: store, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer cp.Close()
	cw, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		b.Fatal(err)
	}
	w := &stampedWriter{Writer: cw, col: -1}
	for i, c := range m.Tables(ns)[0].Columns {
		if c.Name == "created_at" {
			w.col = i
		}
	}
	sk, err := New(Config{Group: testbed.UniqueName(b, "g"), TopicPrefix: prefix},
		Deps{KafkaOpts: kopts, Writer: w, Mapping: m, Store: store, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer sk.Close()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go cp.Run(rctx)
	go sk.Run(rctx)
	// Wait until a first document has gone all the way through.
	for id := int64(-1); ; id-- {
		if _, err := coll.InsertOne(ctx, append(userDoc(id, "warm@x.org", 0, false), bson.E{Key: "created", Value: time.Now()})); err != nil {
			b.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if n := len(sk.Lag()); n > 0 && func() bool { w.mu.Lock(); defer w.mu.Unlock(); return len(w.lats) > 0 }() {
			break
		}
		if ctx.Err() != nil {
			b.Fatal("the pipeline never delivered a first document")
		}
	}
	w.mu.Lock()
	w.lats = w.lats[:0]
	w.mu.Unlock()

	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var sent atomic.Int64
	// One shared pace and many writers: a writer waits for its operation, so
	// with few writers a slow source write would lower the rate offered, and
	// the benchmark would measure the load generator instead of the pipeline.
	pace := rate.NewLimiter(rate.Limit(target), 20)
	var srcMu sync.Mutex
	var srcLats []time.Duration
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			wctx, cancel := context.WithDeadline(ctx, start.Add(duration))
			defer cancel()
			for i := 0; pace.Wait(wctx) == nil; i++ {
				id := int64(g*1_000_000 + rng.IntN(5000))
				began := time.Now()
				var err error
				switch op := rng.IntN(10); {
				case op == 0:
					_, err = coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
				case op < 5:
					_, err = coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}},
						append(userDoc(id, fmt.Sprintf("u%d@x.org", id), i, i%2 == 0), bson.E{Key: "created", Value: time.Now()}),
						options.Replace().SetUpsert(true))
				default:
					_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
						bson.D{{Key: "$set", Value: bson.D{{Key: "age", Value: int32(i % 90)}, {Key: "created", Value: time.Now()}}}},
						options.Update().SetUpsert(true))
				}
				if err != nil {
					b.Error(err)
					return
				}
				srcMu.Lock()
				srcLats = append(srcLats, time.Since(began))
				srcMu.Unlock()
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	achieved := float64(sent.Load()) / time.Since(start).Seconds()
	// Let the tail drain so that the slowest writes are counted too.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		behind := int64(0)
		for _, l := range sk.Lag() {
			behind += l.RecordsBehind
		}
		if behind <= int64(len(sk.Lag())) || time.Now().After(deadline) {
			break
		}
	}
	// Writes record their latency before their offsets count as applied, so
	// once the lag is drained every acknowledged row is in w.lats.
	w.mu.Lock()
	lats := append([]time.Duration(nil), w.lats...)
	w.mu.Unlock()
	if len(lats) < int(float64(sent.Load())*0.5) {
		b.Fatalf("only %d of %d changes reached Cassandra", len(lats), sent.Load())
	}
	slices.Sort(lats)
	q := func(p float64) float64 { return float64(lats[int(p*float64(len(lats)-1))]) / float64(time.Millisecond) }
	// Which stage held the rate back, if one did: the source (MongoDB took
	// the writes slower than asked) or the pipeline (its lag grew).
	slices.Sort(srcLats)
	srcP99 := float64(srcLats[int(0.99*float64(len(srcLats)-1))]) / float64(time.Millisecond)
	if achieved < 0.95*target {
		b.Logf("the source held the rate back: MongoDB took %.0f of the %d changes/s asked for (%d writers, write p99 %.0f ms)",
			achieved, target, writers, srcP99)
	}
	if q(0.99) > 1000 {
		b.Logf("the pipeline held the latency back: p99 %.0f ms from the source write to the Cassandra write, over the 1 s target", q(0.99))
	}
	b.ReportMetric(srcP99, "source_write_p99_ms")
	b.ReportMetric(achieved, "changes/s")
	b.ReportMetric(q(0.50), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
	b.ReportMetric(float64(len(lats)), "rows_measured")
}
