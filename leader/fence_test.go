package leader

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCheck is the fencing rule: a write under an epoch older than the
// stored one is refused, the current term's and a newer term's pass, a
// value no term wrote (an operator's, or an old daemon's) never refuses,
// and a daemon that holds no term may not write.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name          string
		mine, stored  int64
		refused       bool
		wantInMessage string
	}{
		{name: "stale term", mine: 3, stored: 4, refused: true, wantInMessage: "epoch 4, newer than this daemon's 3"},
		{name: "current term", mine: 4, stored: 4},
		{name: "newer term takes over", mine: 5, stored: 4},
		{name: "no term wrote it", mine: 1, stored: 0},
		{name: "no term held", mine: 0, stored: 0, refused: true, wantInMessage: "not the leader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check("rollout/state", tc.mine, tc.stored)
			if !tc.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var de *DeposedError
			if !errors.Is(err, ErrDeposed) || !errors.As(err, &de) || de.Epoch != tc.mine || de.Current != tc.stored {
				t.Fatalf("got %v, want a DeposedError{%d, %d}", err, tc.mine, tc.stored)
			}
			if msg := err.Error(); !strings.Contains(msg, "rollout/state") || !strings.Contains(msg, tc.wantInMessage) {
				t.Fatalf("message %q names neither the key nor %q", msg, tc.wantInMessage)
			}
		})
	}
}

// counter hands out epochs as the checkpoints store's compare-and-swap does.
type counter struct {
	mu sync.Mutex
	n  int64
}

func (c *counter) next(context.Context) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n, nil
}

// TestDeposedStepsDownAndRejoins: a leader told that its term's write was
// fenced counts it, stops leading at once and joins the group again; as the
// only member it takes office again under a new, higher epoch. A deposal of
// a term it no longer holds is counted but changes nothing.
func TestDeposedStepsDownAndRejoins(t *testing.T) {
	opts := testCluster(t)
	var epochs counter
	cfg := Config{Enabled: true, SessionTimeout: 6 * time.Second}.WithDefaults("test")
	reg := prometheus.NewRegistry()
	e := New(cfg, Deps{KafkaOpts: opts, Registerer: reg, TakeOffice: epochs.next})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, func() bool { return e.Epoch() == 1 })
	_, changed := e.Term()
	e.Deposed("rollout", Check("rollout/state", 1, 7))
	select {
	case <-changed:
	default:
		t.Fatal("Deposed did not end the term at once")
	}
	if n := testutil.ToFloat64(e.fenced.WithLabelValues("rollout")); n != 1 {
		t.Fatalf("tidemark_leader_fenced_writes_total{component=rollout} = %v, want 1", n)
	}
	waitFor(t, func() bool { return e.Epoch() == 2 })
	if !e.Leading() {
		t.Fatal("epoch without leading")
	}
	// A stale deposal (epoch 1) must not end term 2.
	e.Deposed("reconcile", Check("leader/current", 1, 2))
	if e.Epoch() != 2 {
		t.Fatalf("a deposal of an old term ended the current one (epoch %d)", e.Epoch())
	}
	if n := testutil.ToFloat64(e.fenced.WithLabelValues("reconcile")); n != 1 {
		t.Fatalf("fenced writes of reconcile = %v, want 1", n)
	}
}

// TestTakeOfficeRetries: a daemon that cannot obtain an epoch does not lead
// on the bare assignment; it keeps trying and leads once it can.
func TestTakeOfficeRetries(t *testing.T) {
	opts := testCluster(t)
	cfg := Config{Enabled: true, SessionTimeout: 6 * time.Second}.WithDefaults("test")
	var mu sync.Mutex
	fails := 0
	take := func(ctx context.Context) (int64, error) {
		mu.Lock()
		defer mu.Unlock()
		if fails < 2 {
			fails++
			return 0, errors.New("store down")
		}
		return 42, nil
	}
	e := New(cfg, Deps{KafkaOpts: opts, TakeOffice: take})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(30 * time.Second); e.Epoch() != 42; time.Sleep(5 * time.Millisecond) {
		if e.Leading() {
			t.Fatal("leading without an epoch")
		}
		if time.Now().After(deadline) {
			t.Fatal("never took office")
		}
	}
}
