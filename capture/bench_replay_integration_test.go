//go:build integration

package capture

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// benchDoc is a real-shaped document of about 1 KB: an ObjectId _id, strings,
// numbers, a date, an array and a nested document.
func benchDoc(i int) bson.D {
	var oid primitive.ObjectID
	copy(oid[:], fmt.Sprintf("%012d", i))
	return bson.D{{Key: "_id", Value: oid}, {Key: "email", Value: fmt.Sprintf("user%07d@example.com", i)},
		{Key: "name", Value: fmt.Sprintf("User Number %d", i)}, {Key: "age", Value: int32(20 + i%60)},
		{Key: "score", Value: float64(i) * 1.5}, {Key: "active", Value: i%2 == 0},
		{Key: "created", Value: primitive.NewDateTimeFromTime(time.Unix(1_700_000_000+int64(i), 0))},
		{Key: "tags", Value: bson.A{"alpha", "beta", "gamma", "delta"}},
		{Key: "address", Value: bson.D{{Key: "street", Value: "1 Long Street Name"}, {Key: "city", Value: "Springfield"},
			{Key: "zip", Value: "12345"}, {Key: "country", Value: "Freedonia"}}},
		{Key: "bio", Value: strings.Repeat("lorem ipsum dolor sit amet ", 28)}}
}

// BenchmarkCaptureReplayVsProduce measures capture's own cost, apart from any
// MongoDB server: recorded change events shaped like a MongoDB 5.0+ server's
// (resume-token _id, operationType, clusterTime, wallTime, ns, documentKey,
// ~1 KB fullDocument) are replayed through the change-stream seam, one server
// batch per capture batch, along the production path (decode, envelope, Kafka
// transaction, checkpoint in a file store) into the stack's Kafka. The
// baseline produces the same records (same keys and values) with a plain
// idempotent franz-go client, acks=all, ProduceSync per batch, to a topic with
// the same partitions. Passes alternate (raw, capture, raw, ..., raw); each
// capture pass is divided by the mean of the raw passes beside it and the
// median ratio is reported as of-baseline (of-baseline-of-sums is the ratio
// of the mean rates).
func BenchmarkCaptureReplayVsProduce(b *testing.B) {
	for _, batchSize := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", batchSize), func(b *testing.B) { benchReplay(b, batchSize) })
	}
}

func benchReplay(b *testing.B, batchSize int) {
	const n, passes = 50_000, 5
	testbed.Kafka(b)
	ctx := context.Background()
	// Recorded events, cut into server batches of batchSize events, each batch
	// ending with a post-batch resume token past its last event.
	var events []bson.Raw
	var recs []*kgo.Record
	t := uint32(1_800_000_000)
	for i := 0; i < n; i++ {
		e := ev{op: "insert", t: t + uint32(i/100), i: uint32(i%100 + 1), id: benchDoc(i)[0].Value, doc: benchDoc(i)}
		raw := e.raw()
		events = append(events, raw)
		full := raw.Lookup("fullDocument").Document()
		env := envelope.Event{Op: envelope.OpInsert, Namespace: rns, ID: full.Lookup("_id"),
			Version: envelope.Version{T: e.t, I: e.i}, Doc: full}
		v, _ := envelope.Encode(nil, &env)
		recs = append(recs, &kgo.Record{Key: env.Key(), Value: v})
	}
	lastT, lastI := t+uint32((n-1)/100), uint32((n-1)%100+1)
	script := func() []step {
		var steps []step
		for i := 0; i < n; i += batchSize {
			end := min(i+batchSize, n)
			ct, ci := t+uint32((end-1)/100), uint32((end-1)%100+1)
			steps = append(steps, step{events: events[i:end], pbrt: token(ct, ci, 9999)})
		}
		return steps
	}
	maxTxn, _ := strconv.Atoi(os.Getenv("TIDEMARK_CAPTURE_BENCH_MAX_TXN_RECORDS"))
	b.Logf("events: %d, event size %d B, record value %d B, max_txn_records %d (0: default)", n, len(events[0]),
		len(recs[0].Value), maxTxn)

	adm := testbed.KafkaAdmin(b)
	// Rates over the whole run, and steady: after the first batch is in
	// Kafka (capture: its first checkpoint; raw: its first acknowledgement),
	// which leaves out connecting, the transactional producer id and the first
	// metadata, paid once per process.
	var capRates, rawRates, capSteady, rawSteady []float64
	var capCPU, rawCPU testbed.CPU
	// rawPass produces the same records with a plain idempotent client.
	rawPass := func(topic string) {
		testbed.CreateTopic(b, adm, topic, 6)
		b.Cleanup(func() { adm.DeleteTopics(context.Background(), topic) })
		waitLeaders(b, topic)
		raw, err := kgo.NewClient(append(append(producerOpts(Config{BatchSize: batchSize}.WithDefaults()), benchKgoLog(b)...),
			kgo.SeedBrokers(testbed.KafkaBrokers()...), kgo.DefaultProduceTopic(topic))...)
		if err != nil {
			b.Fatal(err)
		}
		start, cpu0 := time.Now(), testbed.CPUNow()
		var rawFirst time.Time
		for i := 0; i < n; i += batchSize {
			batch := recs[i:min(i+batchSize, n)]
			for _, r := range batch {
				r.Partition, r.Offset, r.Topic = 0, 0, ""
			}
			if err := raw.ProduceSync(ctx, batch...).FirstErr(); err != nil {
				b.Fatal(err)
			}
			if i == 0 {
				rawFirst = time.Now()
			}
		}
		cpu0.AddSince(&rawCPU)
		rawRates = append(rawRates, float64(n)/time.Since(start).Seconds())
		rawSteady = append(rawSteady, float64(n-batchSize)/time.Since(rawFirst).Seconds())
		raw.Close()
	}
	rawPass(testbed.UniqueName(b, "brp") + ".raw")
	for pass := 0; pass < passes; pass++ {
		// capture
		prefix := testbed.UniqueName(b, "brp")
		store, err := checkpoints.OpenFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		cfg := Config{TopicPrefix: prefix, Namespaces: []string{rns}, Partitions: 6, BatchSize: batchSize,
			MaxTxnRecords: maxTxn, Backfill: BackfillConfig{Enabled: new(bool)}}
		c, err := New(cfg, Deps{KafkaOpts: append(benchKgoLog(b), kgo.SeedBrokers(testbed.KafkaBrokers()...)),
			Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		src := &replaySource{streams: [][]step{script()}, typ: "collection", t0: envelope.Version{T: t}}
		c.src = src
		checkpoints.PutJSON(ctx, store, streamKey(rns), streamState{StartT: t, StartI: 0})
		if err := c.ensureTopics(ctx); err != nil {
			b.Fatal(err)
		}
		waitLeaders(b, envelope.Topic(prefix, rns))
		b.Cleanup(func() {
			adm.DeleteTopics(context.Background(), envelope.Topic(prefix, rns), envelope.DeadLetterTopic(prefix))
		})
		rctx, stop := context.WithCancel(ctx)
		start, cpu0 := time.Now(), testbed.CPUNow()
		done := make(chan struct{})
		go func() { c.Run(rctx); close(done) }()
		var first time.Time
		for {
			st, _, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(rns))
			if st.Token != nil && first.IsZero() {
				first = time.Now()
			}
			if st.Token != nil && !(envelope.Version{T: st.T, I: st.I}).Before(envelope.Version{T: lastT, I: lastI}) {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatal("capture did not finish")
			}
			time.Sleep(2 * time.Millisecond)
		}
		el := time.Since(start)
		cpu0.AddSince(&capCPU)
		capRates = append(capRates, float64(n)/el.Seconds())
		capSteady = append(capSteady, float64(n-batchSize)/time.Since(first).Seconds())
		stop()
		<-done
		c.Close()

		rawPass(prefix + ".raw")
		b.Logf("pass %d: raw produce %.0f events/s (steady %.0f/s), capture %.0f events/s (%v; steady %.0f/s), "+
			"raw produce %.0f events/s (steady %.0f/s)", pass, rawRates[pass], rawSteady[pass], capRates[pass],
			el.Round(time.Millisecond), capSteady[pass], rawRates[pass+1], rawSteady[pass+1])
	}
	// Each capture pass is divided by the mean of the raw passes on either
	// side of it, and the median of those ratios is the result (as in
	// BenchmarkSink): a neighbour's burst on the shared machine that lands on
	// one pass moves one ratio, not the sum of all passes.
	ratios, wholeRatios := testbed.NeighbourRatios(capSteady, rawSteady), testbed.NeighbourRatios(capRates, rawRates)
	sum := func(xs []float64) (s float64) {
		for _, x := range xs {
			s += x
		}
		return s
	}
	b.Logf("capture / neighbouring raw passes (steady): %.2f", ratios)
	perEvent := func(d time.Duration, passes int) float64 { return float64(d.Microseconds()) / float64(passes*n) }
	b.Logf("CPU per event, µs (this process + Kafka): capture %.1f + %.1f, raw produce %.1f + %.1f",
		perEvent(capCPU.Client, passes), perEvent(capCPU.Kafka, passes),
		perEvent(rawCPU.Client, passes+1), perEvent(rawCPU.Kafka, passes+1))
	b.ReportMetric(testbed.Median(capSteady), "capture_events/s")
	b.ReportMetric(testbed.Median(rawSteady), "baseline_raw_produce_events/s")
	b.ReportMetric(testbed.Median(ratios), "of-baseline")
	b.ReportMetric(testbed.Median(wholeRatios), "whole-run-of-baseline")
	b.ReportMetric(sum(capSteady)/float64(len(capSteady))/(sum(rawSteady)/float64(len(rawSteady))), "of-baseline-of-sums")
}

func benchKgoLog(b *testing.B) []kgo.Opt {
	p := os.Getenv("TIDEMARK_BENCH_KGO_LOG")
	if p == "" {
		return nil
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	stamp := func() string { return time.Now().Format("15:04:05.000 ") }
	return []kgo.Opt{kgo.WithLogger(kgo.BasicLogger(f, kgo.LogLevelDebug, stamp))}
}
