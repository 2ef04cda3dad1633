//go:build integration

package sink

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
)

// nopWriter acknowledges every write at once.
type nopWriter struct{}

func (nopWriter) Write(context.Context, *transform.Table, []Change) error { return nil }
func (nopWriter) ApplyMapped(context.Context, *transform.Table, *envelope.Event, *transform.Row) error {
	return nil
}

// BenchmarkSinkNoTarget runs the sink over 100,000 records against a target
// that acknowledges at once: what is left is the sink's own work (fetch,
// decode, transform, grouping, the writer pool, commits) and its CPU per row,
// the part of BenchmarkSink's cost that is not gocql's or Cassandra's.
func BenchmarkSinkNoTarget(b *testing.B) {
	const n = 100_000
	bt := newBenchTopic(b, n)
	brokers, m, prefix := bt.brokers, bt.m, bt.prefix
	ctx := context.Background()
	b.ResetTimer()
	var rates, cpu []float64
	for range 3 {
		store, err := checkpoints.OpenFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		sk, err := New(Config{Group: testbed.UniqueName(b, "g"), TopicPrefix: prefix, Concurrency: benchInFlight, MaxInFlight: benchInFlight},
			Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(brokers...)}, Writer: nopWriter{}, Mapping: m, Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { sk.Run(sctx); close(done) }()
		for deadline := time.Now().Add(time.Minute); !slices.ContainsFunc(sk.Lag(), func(l PartitionLag) bool { return l.End > 0 }); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the sink fetched nothing in a minute")
			}
		}
		start, c0 := time.Now(), testbed.SelfCPU()
		for applied := int64(0); applied < n; time.Sleep(2 * time.Millisecond) {
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("sink applied %d of %d records in 5 minutes", applied, n)
			}
			applied = 0
			for _, l := range sk.Lag() {
				applied += max(0, l.Committed)
			}
		}
		rates = append(rates, float64(n)/time.Since(start).Seconds())
		cpu = append(cpu, float64((testbed.SelfCPU()-c0).Microseconds())/n)
		stop()
		<-done
		sk.Close()
	}
	b.Logf("passes %.0f rows/s, client CPU per row %.1fµs", rates, cpu)
	b.ReportMetric(testbed.Median(rates), "rows/s")
	b.ReportMetric(testbed.Median(cpu), "cpu_µs/row")
}
