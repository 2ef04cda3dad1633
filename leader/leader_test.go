package leader

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func testCluster(t *testing.T) []kgo.Opt {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
}

type member struct {
	e    *Elector
	stop context.CancelFunc
	done chan error
}

func join(t *testing.T, opts []kgo.Opt) *member {
	t.Helper()
	cfg := Config{Enabled: true}.WithDefaults("test")
	cfg.SessionTimeout = 6 * time.Second
	ctx, stop := context.WithCancel(context.Background())
	m := &member{e: New(cfg, Deps{KafkaOpts: opts}), stop: stop, done: make(chan error, 1)}
	go func() { m.done <- m.e.Run(ctx) }()
	t.Cleanup(func() { stop(); <-m.done })
	return m
}

// watch samples who leads until stopped, and counts the samples at which
// more than one member did.
func watch(ms ...*member) (stop func() int64) {
	var both atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			n := 0
			for _, m := range ms {
				if m.e.Leading() {
					n++
				}
			}
			if n > 1 {
				both.Add(1)
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	return func() int64 { close(done); wg.Wait(); return both.Load() }
}

func waitLeaders(t *testing.T, want int, ms ...*member) *member {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var leaders []*member
		for _, m := range ms {
			if m.e.Leading() {
				leaders = append(leaders, m)
			}
		}
		if len(leaders) == want {
			if want == 1 {
				return leaders[0]
			}
			return nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d leaders after 30s, want %d", len(leaders), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOneLeaderAndHandOver starts three electors: exactly one leads. Its
// leaving hands the role to one of the others, and never are two leading.
func TestOneLeaderAndHandOver(t *testing.T) {
	opts := testCluster(t)
	a, b, c := join(t, opts), join(t, opts), join(t, opts)
	stopWatch := watch(a, b, c)
	first := waitLeaders(t, 1, a, b, c)
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	first.done <- nil // for the cleanup
	if first.e.Leading() {
		t.Fatal("a stopped elector still says it leads")
	}
	var rest []*member
	for _, m := range []*member{a, b, c} {
		if m != first {
			rest = append(rest, m)
		}
	}
	second := waitLeaders(t, 1, rest...)
	if second == first {
		t.Fatal("the stopped elector leads")
	}
	if n := stopWatch(); n > 0 {
		t.Fatalf("two electors led at once in %d samples", n)
	}
}

// TestLeadRunsOnlyWhileLeading checks that Lead's function runs on the
// leader only, that its context ends when the role moves, and that it runs
// again on the new leader.
func TestLeadRunsOnlyWhileLeading(t *testing.T) {
	opts := testCluster(t)
	a, b := join(t, opts), join(t, opts)
	var running atomic.Int32
	var mu sync.Mutex
	runs := map[*member]int{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range []*member{a, b} {
		wg.Go(func() {
			err := m.e.Lead(ctx, func(lctx context.Context) error {
				if n := running.Add(1); n > 1 {
					t.Errorf("%d schedules running at once", n)
				}
				mu.Lock()
				runs[m]++
				mu.Unlock()
				<-lctx.Done()
				running.Add(-1)
				return lctx.Err()
			})
			if err != nil {
				t.Errorf("Lead: %v", err)
			}
		})
	}
	first := waitLeaders(t, 1, a, b)
	waitFor(t, func() bool { return running.Load() == 1 })
	first.stop()
	<-first.done
	first.done <- nil
	second := waitLeaders(t, 1, a, b)
	if second == first {
		t.Fatal("the stopped elector leads")
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return runs[second] == 1 })
	cancel()
	wg.Wait()
	if runs[first] != 1 {
		t.Errorf("the first leader ran the function %d times, want 1", runs[first])
	}
}

// TestLeadReturnsTheFunctionsError: a failure that is not the role moving
// is the caller's to handle.
func TestLeadReturnsTheFunctionsError(t *testing.T) {
	a := join(t, testCluster(t))
	boom := errors.New("boom")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.e.Lead(ctx, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Lead returned %v, want %v", err, boom)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testbed.Until(t, "condition", 30*time.Second, cond)
}
