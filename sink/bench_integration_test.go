//go:build integration

package sink

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
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

// BenchmarkSink measures rows/s from a Kafka topic into the local Cassandra
// through the sink (fetch, decode, transform, throttle, write, commit), next
// to the practical ceiling: a plain gocql loop with the same concurrency
// writing the same, already transformed rows with the same statement, in the
// same run.
func BenchmarkSink(b *testing.B) {
	const n, partitions = 30_000, 6
	s := testbed.Cassandra(b)
	brokers := testbed.Kafka(b)
	ctx := context.Background()
	ns := testbed.UniqueName(b, "bench") + ".users"
	ks := testbed.UniqueName(b, "ks")
	m := singleTableMapping(b, s, ns, ks)
	prefix := testbed.UniqueName(b, "bench")
	topic := prefix + "." + ns
	testbed.CreateTopic(b, testbed.KafkaAdmin(b), topic, partitions)

	recs := make([]*kgo.Record, n)
	rows := make([]transform.Row, n)
	versions := make([]int64, n)
	for i := range recs {
		doc, _ := bson.Marshal(userDoc(int64(i), fmt.Sprintf("u%d@x.org", i), i, true))
		ev := envelope.Event{Op: envelope.OpInsert, Namespace: ns, ID: bson.Raw(doc).Lookup("_id"),
			Version: envelope.Version{T: 1_700_000_000, I: uint32(i + 1)}, Doc: doc}
		v, err := envelope.Encode(nil, &ev)
		if err != nil {
			b.Fatal(err)
		}
		recs[i] = &kgo.Record{Topic: topic, Key: ev.Key(), Value: v}
		r, err := m.Apply(ns, doc)
		if err != nil || len(r) != 1 {
			b.Fatalf("transform: %v", err)
		}
		rows[i], versions[i] = r[0], ev.Version.Micros()
	}
	pcl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer pcl.Close()
	if err := pcl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		b.Fatal(err)
	}

	// Baseline: the same INSERT the sink prepares, from benchInFlight
	// goroutines. It runs before and after the sink and the better run counts,
	// so that neither warm-up nor compaction flatters the sink.
	table := m.Tables(ns)[0]
	stmt := newStatements(table).insert
	plainLoop := func() float64 {
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
		return float64(n) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	baseline := plainLoop()

	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		b.Fatal(err)
	}
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
	// The clock starts once the group assigned the partitions: joining a
	// group is a one-off cost of starting, not of writing.
	for deadline := time.Now().Add(time.Minute); len(sk.Lag()) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the sink was assigned no partition in a minute")
		}
	}
	start := time.Now()
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
	rate := float64(n) / time.Since(start).Seconds()
	stop()
	b.Logf("throttle limit at the end: %d of %d", sk.lim.Limit(), benchInFlight)
	baseline = max(baseline, plainLoop())
	b.ReportMetric(rate, "sink_rows/s")
	b.ReportMetric(baseline, "baseline_gocql_loop_rows/s")
	b.ReportMetric(100*rate/baseline, "sink_%_of_baseline")
}
