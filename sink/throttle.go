package sink

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// throttle bounds in-flight writes and adapts the bound to the target's health:
// when the p99 latency or the error rate of the last window crosses its limit
// the bound halves, otherwise it grows by one (AIMD, as TCP does), so a slow
// Cassandra gets fewer concurrent writes instead of a pile-up.
type throttle struct {
	cfg   Config
	met   *metrics
	mu    sync.Mutex
	cond  *sync.Cond
	limit int
	busy  int
	lat   []time.Duration
	errs  int
	since time.Time
	// rate caps writes per second when the config asks for it (nil: no cap).
	rate *rate.Limiter
}

func newThrottle(cfg Config, met *metrics) *throttle {
	t := &throttle{cfg: cfg, met: met, limit: cfg.MaxInFlight, since: time.Now()}
	t.cond = sync.NewCond(&t.mu)
	met.limit.Set(float64(t.limit))
	if r := cfg.Throttle.MaxWritesPerSecond; r > 0 {
		// A tenth of a second's worth of burst: smooth, but not one timer
		// wake-up per write at thousands per second.
		t.rate = rate.NewLimiter(rate.Limit(r), max(1, int(math.Ceil(r/10))))
	}
	return t
}

func (t *throttle) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.rate != nil {
		// Before taking a slot, so a capped sink does not also hold slots
		// idle while it waits for its turn.
		began := time.Now()
		if err := t.rate.Wait(ctx); err != nil {
			return err
		}
		t.met.rateWait.Add(time.Since(began).Seconds())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.busy >= t.limit {
		// Wake on ctx end too, so a waiting worker can always stop.
		stop := context.AfterFunc(ctx, func() {
			t.mu.Lock()
			t.cond.Broadcast()
			t.mu.Unlock()
		})
		defer stop()
	}
	for t.busy >= t.limit {
		if err := ctx.Err(); err != nil {
			// This waiter may have taken the one wake-up a release sent; hand
			// it on, or a free slot would sit unused until the next release.
			if t.busy < t.limit {
				t.cond.Signal()
			}
			return err
		}
		t.cond.Wait()
	}
	t.busy++
	t.met.inflight.Set(float64(t.busy))
	// Slots are freed one at a time but the limit can grow by several, so
	// wake the next waiter while slots remain.
	if t.busy < t.limit {
		t.cond.Signal()
	}
	return nil
}

func (t *throttle) release(d time.Duration, err error) {
	t.met.latency.Observe(d.Seconds())
	t.mu.Lock()
	defer t.mu.Unlock()
	t.busy--
	t.met.inflight.Set(float64(t.busy))
	t.lat = append(t.lat, d)
	if err != nil {
		t.errs++
	}
	if time.Since(t.since) >= t.cfg.Throttle.Window && len(t.lat) > 0 {
		t.adjust()
	}
	// One freed slot wakes one waiter: with hundreds of workers waiting,
	// waking all of them for every write costs more CPU than the writes.
	t.cond.Signal()
}

func (t *throttle) adjust() {
	sort.Slice(t.lat, func(i, j int) bool { return t.lat[i] < t.lat[j] })
	p99 := t.lat[(len(t.lat)*99)/100]
	rate := float64(t.errs) / float64(len(t.lat))
	if p99 > t.cfg.Throttle.P99 || rate > t.cfg.Throttle.ErrorRate {
		t.limit = max(1, t.limit/2)
	} else {
		t.limit = min(t.cfg.MaxInFlight, t.limit+max(1, t.limit/10))
	}
	t.met.limit.Set(float64(t.limit))
	t.lat, t.errs, t.since = t.lat[:0], 0, time.Now()
}

// Limit is the current in-flight bound.
func (t *throttle) Limit() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.limit
}
