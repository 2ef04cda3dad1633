package sink

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// slowTarget stands in for a Cassandra whose latency grows with concurrency,
// as an overloaded cluster's does: each write takes base (200 µs if zero),
// or, while slow, 2 ms per write in flight.
type slowTarget struct {
	base time.Duration
	// perWrite is what each write in flight adds to a slow write (default 2 ms).
	perWrite time.Duration
	inflight atomic.Int64
	peak     atomic.Int64 // since the last reset
	slow     atomic.Bool
}

func (s *slowTarget) write(ctx context.Context) (time.Duration, error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	d := cmp.Or(s.base, 200*time.Microsecond)
	if s.slow.Load() {
		d = time.Duration(n) * cmp.Or(s.perWrite, 2*time.Millisecond)
	}
	select {
	case <-time.After(d):
		return d, nil
	case <-ctx.Done():
		return d, ctx.Err()
	}
}

func TestThrottleBacksOffAndRecovers(t *testing.T) {
	cfg := Config{MaxInFlight: 64, Throttle: ThrottleConfig{P99: 20 * time.Millisecond, Window: 100 * time.Millisecond}}.WithDefaults()
	th := newThrottle(cfg, newMetrics(prometheus.NewRegistry()))
	target := &slowTarget{}
	run := func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		for w := 0; w < 64; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for th.acquire(ctx) == nil {
					lat, err := target.write(context.Background())
					th.release(lat, err)
				}
			}()
		}
		wg.Wait()
	}
	run(300 * time.Millisecond)
	if l := th.Limit(); l != 64 {
		t.Fatalf("healthy target: limit %d, want the maximum 64", l)
	}
	target.slow.Store(true)
	run(1500 * time.Millisecond)
	slowLimit := th.Limit()
	// At 2ms per concurrent write, p99 under 20ms needs fewer than ~10 in flight.
	if slowLimit > 12 {
		t.Fatalf("slow target: limit stayed at %d", slowLimit)
	}
	target.slow.Store(false)
	run(2 * time.Second)
	if l := th.Limit(); l <= slowLimit*2 {
		t.Fatalf("recovered target: limit %d did not grow back from %d", l, slowLimit)
	}
}

func TestThrottleAcquireStopsWithContext(t *testing.T) {
	cfg := Config{MaxInFlight: 1}.WithDefaults()
	th := newThrottle(cfg, newMetrics(nil))
	if err := th.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := th.acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked acquire returned %v", err)
	}
}

// TestThrottleNoLostWakeup: a release wakes a single waiter. When that waiter
// gives up because its context ended, the wake-up must pass on; otherwise the
// freed slot stays unused and the other waiters hang although nothing is in
// flight.
func TestThrottleNoLostWakeup(t *testing.T) {
	for round := 0; round < 50; round++ {
		th := newThrottle(Config{MaxInFlight: 2}.WithDefaults(), newMetrics(nil))
		for i := 0; i < 2; i++ {
			if err := th.acquire(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		quitters, cancel := context.WithCancel(context.Background())
		deadline, stop := context.WithTimeout(context.Background(), 5*time.Second)
		var wg sync.WaitGroup
		var got atomic.Int64
		for i := 0; i < 8; i++ {
			ctx := deadline
			if i%2 == 0 {
				ctx = quitters
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if th.acquire(ctx) == nil {
					got.Add(1)
					th.release(time.Millisecond, nil)
				}
			}()
		}
		// Cancel the quitters while the releases are being handed out, so
		// some of them hold a wake-up when they leave.
		go cancel()
		th.release(time.Millisecond, nil)
		th.release(time.Millisecond, nil)
		wg.Wait()
		stop()
		if got.Load() < 4 {
			t.Fatalf("round %d: only %d of the 4 patient waiters got a slot within 5s", round, got.Load())
		}
	}
}

// TestThrottleCapsWriteRate: with sink.throttle.max_writes_per_second set,
// many eager workers together write no faster than the cap (plus its
// tenth-of-a-second burst), waiting workers stop when their context ends,
// and the time they waited is counted.
func TestThrottleCapsWriteRate(t *testing.T) {
	const perSecond = 200
	met := newMetrics(prometheus.NewRegistry())
	th := newThrottle(Config{MaxInFlight: 64, Throttle: ThrottleConfig{MaxWritesPerSecond: perSecond}}.WithDefaults(), met)
	ctx, cancel := context.WithCancel(context.Background())
	var writes atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for th.acquire(ctx) == nil {
				writes.Add(1)
				th.release(time.Microsecond, nil)
			}
		}()
	}
	began := time.Now()
	for writes.Load() < perSecond/2 && time.Since(began) < 10*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	elapsed := time.Since(began)
	// Every write was allowed by the limiter: at most its burst plus the
	// rate times the time it ran.
	if n, most := writes.Load(), int64(perSecond/10+perSecond*elapsed.Seconds()+1); n > most {
		t.Fatalf("%d writes in %v, the cap allows at most %d", n, elapsed, most)
	}
	if writes.Load() < perSecond/2 {
		t.Fatalf("only %d writes in %v at a cap of %d/s", writes.Load(), elapsed, perSecond)
	}
	if waited := testutil.ToFloat64(met.rateWait); waited <= 0 {
		t.Fatalf("tidemark_sink_rate_wait_seconds_total is %v after capped writes", waited)
	}
	if err := (Config{Throttle: ThrottleConfig{MaxWritesPerSecond: -1}}).Validate(); err == nil || !strings.Contains(err.Error(), "max_writes_per_second") {
		t.Fatalf("a negative cap: %v", err)
	}
}
