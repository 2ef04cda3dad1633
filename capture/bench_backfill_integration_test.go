//go:build integration

package capture

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// BenchmarkBackfillVsScan measures the initial backfill of a collection of
// ~1 KB documents (100,000 unless TIDEMARK_BACKFILL_BENCH_DOCS says
// otherwise) from the MongoDB stand-in into the stack's Kafka (chunks,
// envelopes, produce, acknowledgements, checkpoint per chunk in a file store),
// next to the baseline: a plain _id-ordered scan of the same collection with
// the same driver and client (sort and hint on _id, the same batch size,
// each document copied), in the same run. Three passes alternate (scan, backfill,
// scan, backfill); of-baseline is the ratio of the summed rates.
//
// A second baseline separates tidemark's own cost from the source's: the
// backfill's own chunk queries, read and dropped (no envelopes, no Kafka, no
// checkpoints). of-chunked-scan is the backfill against that; chunked-of-scan
// is what answering one query per chunk costs the source against one cursor.
func BenchmarkBackfillVsScan(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("TIDEMARK_BACKFILL_BENCH_DOCS")); err == nil && v > 0 {
		n = v
	}
	const passes, chunk = 3, 1000
	par, _ := strconv.Atoi(os.Getenv("TIDEMARK_BACKFILL_BENCH_PARALLELISM")) // 0: the default
	testbed.Kafka(b)
	mc := testbed.Mongo(b)
	ctx := context.Background()
	db := testbed.UniqueName(b, "bfb")
	ns := db + ".c"
	coll := mc.Database(db).Collection("c")
	b.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	for i := 0; i < n; i += 1000 {
		var docs []any
		for j := i; j < min(i+1000, n); j++ {
			docs = append(docs, benchDoc(j))
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			b.Fatal(err)
		}
	}
	adm := testbed.KafkaAdmin(b)
	var scanRates, chunkRates, bfRates []float64
	for pass := 0; pass < passes; pass++ {
		start := time.Now()
		cur, err := coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).
			SetHint(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(chunk))
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for cur.Next(ctx) {
			_ = append(bson.Raw(nil), cur.Current...)
			got++
		}
		if err := cur.Err(); err != nil || got != n {
			b.Fatalf("plain scan read %d of %d: %v", got, n, err)
		}
		cur.Close(ctx)
		scanRates = append(scanRates, float64(n)/time.Since(start).Seconds())

		prefix := testbed.UniqueName(b, "bfb")
		store, err := checkpoints.OpenFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		c, err := New(Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6,
			Backfill: BackfillConfig{ChunkSize: chunk, Parallelism: par}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.ensureTopics(ctx); err != nil {
			b.Fatal(err)
		}
		waitLeaders(b, envelope.Topic(prefix, ns))
		b.Cleanup(func() {
			adm.DeleteTopics(context.Background(), envelope.Topic(prefix, ns), envelope.DeadLetterTopic(prefix))
		})
		t0, err := c.clusterTime(ctx, ns)
		if err != nil {
			b.Fatal(err)
		}
		chunkRates = append(chunkRates, chunkedScanRate(b, c, ns, t0, chunk, n))
		start = time.Now()
		if err := c.initialBackfill(ctx, ns, t0); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		c.Close()
		p, _, _ := BackfillProgress(ctx, store, ns)
		if !p.Done || p.Docs != int64(n) {
			b.Fatalf("backfill: %+v, want %d documents", p, n)
		}
		bfRates = append(bfRates, float64(n)/el.Seconds())
		b.Logf("pass %d: plain scan %.0f docs/s, its chunk queries alone %.0f docs/s, backfill %.0f docs/s (%v, %d chunks)",
			pass, scanRates[pass], chunkRates[pass], bfRates[pass], el.Round(time.Millisecond), p.Chunks)
	}
	var ss, cs, bs float64
	for i := range scanRates {
		ss, cs, bs = ss+scanRates[i], cs+chunkRates[i], bs+bfRates[i]
	}
	b.ReportMetric(bs/passes, "backfill_docs/s")
	b.ReportMetric(ss/passes, "baseline_scan_docs/s")
	b.ReportMetric(cs/passes, "chunked_scan_docs/s")
	b.ReportMetric(bs/ss, "of-baseline")
	b.ReportMetric(bs/cs, "of-chunked-scan")
	b.ReportMetric(cs/ss, "chunked-of-scan")
}

// chunkedScanRate reads the collection with the backfill's own scanner and
// chunk queries, dropping the documents, and returns documents per second.
func chunkedScanRate(b *testing.B, c *Capture, ns string, t0 envelope.Version, chunk, n int) float64 {
	b.Helper()
	ctx := context.Background()
	db, coll, _ := cut(ns)
	start := time.Now()
	scan, err := c.newScanner(ctx, c.mongo.Database(db).Collection(coll), t0)
	if err != nil {
		b.Fatal(err)
	}
	defer scan.close()
	var last *bson.RawValue
	got := 0
	for {
		docs, err := c.readChunk(ctx, ns, scan, last, chunk)
		if err != nil {
			b.Fatal(err)
		}
		got += len(docs)
		if len(docs) < chunk {
			break
		}
		id := docs[len(docs)-1].Lookup("_id")
		last = &id
	}
	if got != n {
		b.Fatalf("the chunk queries read %d of %d documents", got, n)
	}
	return float64(n) / time.Since(start).Seconds()
}
