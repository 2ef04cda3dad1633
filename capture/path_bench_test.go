package capture

import (
	"log/slog"
	"testing"

	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// BenchmarkEventPath times capture's CPU per change event between the
// server's batch and Kafka's client, without either: decode, coalesce and
// encode into records, for a batch of 1,000 ~1 KB insert events, as flush
// does. It has no baseline in the same run; it is the figure to profile
// (go test -bench EventPath -cpuprofile) when capture's own cost moves.
func BenchmarkEventPath(b *testing.B) {
	c, err := New(Config{Namespaces: []string{rns}, Partitions: 3, TopicPrefix: "rp"},
		Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, Store: checkpointstest.New(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const n = 1000
	raws := make([]bson.Raw, n)
	var bytes int64
	for i := range raws {
		raws[i] = ev{op: "insert", t: 100 + uint32(i), i: 1, id: primitive.NewObjectID(),
			doc: doc(i, "name", "user", "bio", string(make([]byte, 900)))}.raw()
		bytes += int64(len(raws[i]))
	}
	b.SetBytes(bytes)
	b.ReportAllocs()
	s := &streamRun{c: c, ns: rns, topic: "rp." + rns}
	for b.Loop() {
		for _, raw := range raws {
			e, err := decodeEventFor(raw, rns)
			if err != nil {
				b.Fatal(err)
			}
			s.pending = append(s.pending, e)
		}
		if recs, dead := s.records(coalesce(s.pending)); len(recs) != n || len(dead) != 0 {
			b.Fatalf("%d records, %d dead letters", len(recs), len(dead))
		}
		s.pending = s.pending[:0]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}
