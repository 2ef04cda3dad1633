//go:build integration

package sink

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

// BenchmarkBackfillEndToEnd measures an initial backfill end to end: n user
// documents in the MongoDB stand-in (100,000 unless TIDEMARK_BACKFILL_E2E_DOCS
// says otherwise; at 20,000, starting capture and joining the group weigh as
// much as the writes), read by capture's backfill into Kafka and written by
// the sink into Cassandra (the users table of examples/specs/users.yaml), timed
// from capture's and the sink's start to the last row applied. The baseline
// is the plain gocql loop (plainWrites) writing the same rows, already
// transformed, in the same run. Passes alternate plain, backfill, plain, ...;
// each backfill pass is compared with the mean of the plain passes on either
// side, and of-baseline is the median of those ratios.
func BenchmarkBackfillEndToEnd(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("TIDEMARK_BACKFILL_E2E_DOCS")); err == nil && v > 0 {
		n = v
	}
	const passes = 3
	s, brokers, mc := testbed.Cassandra(b), testbed.Kafka(b), testbed.Mongo(b)
	ctx := context.Background()
	db := testbed.UniqueName(b, "bfe")
	ns := db + ".users"
	coll := mc.Database(db).Collection("users")
	b.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	m := singleTableMapping(b, s, ns, testbed.UniqueName(b, "ks"))
	rows := make([]transform.Row, 0, n)
	versions := make([]int64, 0, n)
	for i := 0; i < n; i += 1000 {
		var docs []any
		for j := i; j < min(i+1000, n); j++ {
			d := userDoc(int64(j), fmt.Sprintf("u%d@x.org", j), j, j%2 == 0)
			docs = append(docs, d)
			raw, err := bson.Marshal(d)
			if err != nil {
				b.Fatal(err)
			}
			r, err := m.Apply(ns, raw)
			if err != nil || len(r) != 1 {
				b.Fatalf("transform: %v", err)
			}
			rows, versions = append(rows, r[0]), append(versions, envelope.Version{T: 1_700_000_000, I: uint32(j + 1)}.Micros())
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			b.Fatal(err)
		}
	}
	stmt := newStatements(m.Tables(ns)[0]).insert
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		b.Fatal(err)
	}
	adm := testbed.KafkaAdmin(b)
	kopts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	backfillPass := func() float64 {
		prefix := testbed.UniqueName(b, "bfe")
		b.Cleanup(func() {
			adm.DeleteTopics(context.Background(), envelope.Topic(prefix, ns), envelope.DeadLetterTopic(prefix))
		})
		store, err := checkpoints.OpenFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		cp, err := capture.New(capture.Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6}, capture.Deps{Mongo: mc, KafkaOpts: kopts, Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer cp.Close()
		sk, err := New(Config{Group: testbed.UniqueName(b, "g"), TopicPrefix: prefix, Concurrency: benchInFlight, MaxInFlight: benchInFlight},
			Deps{KafkaOpts: kopts, Writer: w, Mapping: m, Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer sk.Close()
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		start := time.Now()
		go cp.Run(pctx)
		go sk.Run(pctx)
		for applied := int64(0); applied < int64(n); {
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("%d of %d documents applied in 5 minutes", applied, n)
			}
			time.Sleep(5 * time.Millisecond) // polling progress, with the deadline above
			applied = 0
			for _, l := range sk.Lag() {
				applied += max(0, l.Committed)
			}
		}
		return float64(n) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	var plains, rates []float64
	plains = append(plains, plainWrites(b, s, stmt, rows, versions))
	for range passes {
		rates = append(rates, backfillPass())
		plains = append(plains, plainWrites(b, s, stmt, rows, versions))
	}
	ratios := testbed.NeighbourRatios(rates, plains)
	b.Logf("%d documents: backfill end to end %.0f docs/s, plain gocql loop %.0f rows/s, ratios %.3f", n, rates, plains, ratios)
	b.ReportMetric(testbed.Median(rates), "backfill_e2e_docs/s")
	b.ReportMetric(testbed.Median(plains), "baseline_gocql_loop_rows/s")
	b.ReportMetric(testbed.Median(ratios), "of-baseline")
}
