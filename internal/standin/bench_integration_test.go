//go:build integration

package standin

import (
	"context"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
)

// BenchmarkStandinGetMore times a change-stream getMore that returns one new
// event (the median of 200) on the stand-in with a short oplog (1,000
// entries), a long one (200,000), and short again after trimming the long
// one away, alternating so that a machine busier in one phase does not
// decide the ratio. A replica set's getMore resumes a positioned cursor, so
// its cost does not depend on the oplog's length; mongo-java-server 1.47.0
// rebuilt the stream from the whole oplog on every getMore, which made
// capture's cost grow with the oplog. of-baseline is the short oplog's time
// (the mean of both short phases) over the long one's: 1 when flat.
//
//	go test -tags integration -run '^$' -bench BenchmarkStandinGetMore -benchtime 1x ./internal/standin/
func BenchmarkStandinGetMore(b *testing.B) {
	const short, long, rounds = 1_000, 200_000, 200
	s := testbed.StartStandin(b)
	cl := connect(b, s.URI)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	db := cl.Database("getmore")
	watched, filler := db.Collection("watched"), db.Collection("filler")
	// at measures the getMore with the oplog at about n entries, adding
	// filler entries to reach it.
	at := func(n int64) (time.Duration, int64) {
		if more := n - oplogEntries(b, ctx, cl); more > 0 {
			fill(b, ctx, filler, int(more))
		}
		have := oplogEntries(b, ctx, cl)
		return getMoreCost(b, ctx, watched, rounds), have
	}
	fill(b, ctx, filler, short/2)
	// Warm the JIT: with 50 getMores first the first short phase still came
	// out 1.5-6x slower than the same phase after the long one.
	getMoreCost(b, ctx, watched, 500)

	b.ResetTimer()
	for range b.N {
		c1, n1 := at(short)
		c2, n2 := at(long)
		if _, err := testbed.SetOplogCap(ctx, cl, short, -1); err != nil {
			b.Fatal(err)
		}
		if _, err := testbed.SetOplogCap(ctx, cl, 0, -1); err != nil { // trimmed; unbounded again
			b.Fatal(err)
		}
		c3, n3 := at(short)
		if n2 < long || n1 > 2*short || n3 > 2*short {
			b.Fatalf("oplog lengths %d, %d, %d; want about %d, %d, %d", n1, n2, n3, short, long, short)
		}
		base := (c1 + c3) / 2
		b.ReportMetric(float64(base.Nanoseconds()), "short_getMore_ns")
		b.ReportMetric(float64(c2.Nanoseconds()), "long_getMore_ns")
		b.ReportMetric(base.Seconds()/c2.Seconds(), "of-baseline")
		b.Logf("median getMore of one event: %v at %d oplog entries, %v at %d, %v at %d after trimming: long/short %.2fx",
			c1, n1, c2, n2, c3, n3, c2.Seconds()/base.Seconds())
	}
}
