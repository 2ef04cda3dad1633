package rollout_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/leader"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/rollout/rollouttest"
)

// laggingStore reads like a Kafka store that has not yet consumed other
// daemons' writes (its process was frozen): while lagging, Get and
// GetVersion of rollout's state answer what was stored when Lag was called.
// A compare-and-swap against that old version fails, and after it the
// store has caught up, as the Kafka store has once it reads its own
// conditional record back.
type laggingStore struct {
	checkpoints.Store
	mu     sync.Mutex
	lag    bool
	val    []byte
	ver    int64
	reads  int // stale reads answered
	failed int // conditional writes refused as stale
}

func (s *laggingStore) Lag(ctx context.Context) {
	v, ver, _ := s.Store.GetVersion(ctx, rollout.StateKey)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lag, s.val, s.ver = true, v, ver
}

func (s *laggingStore) stale(key string) ([]byte, int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lag || key != rollout.StateKey {
		return nil, 0, false
	}
	s.reads++
	return s.val, s.ver, true
}

func (s *laggingStore) Get(ctx context.Context, key string) ([]byte, error) {
	if v, _, ok := s.stale(key); ok {
		return v, nil
	}
	return s.Store.Get(ctx, key)
}

func (s *laggingStore) GetVersion(ctx context.Context, key string) ([]byte, int64, error) {
	if v, ver, ok := s.stale(key); ok {
		return v, ver, nil
	}
	return s.Store.GetVersion(ctx, key)
}

func (s *laggingStore) CompareAndSwap(ctx context.Context, key string, old int64, value []byte) (int64, error) {
	ver, err := s.Store.CompareAndSwap(ctx, key, old, value)
	if errors.Is(err, checkpoints.ErrConflict) && key == rollout.StateKey {
		s.mu.Lock()
		if s.lag {
			s.failed++
		}
		s.lag = false
		s.mu.Unlock()
	}
	return ver, err
}

// deposals records what an engine told its elector.
type deposals struct {
	mu   sync.Mutex
	errs []error
}

func (d *deposals) record(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.errs = append(d.errs, err)
}

func (d *deposals) list() []error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]error(nil), d.errs...)
}

func fencedEngine(t *testing.T, en *env, store checkpoints.Store, act rollout.Actions, dep *deposals) *rollout.Engine {
	t.Helper()
	e, err := rollout.NewEngine(en.cfg, rollout.Deps{Store: store, Signals: en.sig, Actions: act, Logger: slog.New(slog.DiscardHandler), Deposed: dep.record},
		rollout.WithClock(en.clock.Now), rollout.WithPoll(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetEvaluating(en.ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(en.ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func storedState(t *testing.T, en *env) rollout.State {
	t.Helper()
	st, ok, err := checkpoints.GetJSON[rollout.State](en.ctx, en.store, rollout.StateKey)
	if err != nil || !ok {
		t.Fatalf("stored state: %v (found %v)", err, ok)
	}
	return st
}

// TestFencingRefusesADeposedLeader plays a leader frozen past its session:
// daemon a evaluates under epoch 1 until its gates have almost held their
// window, then stops (frozen); b takes office under epoch 2 and an
// operator aborts the plan on b. When a wakes, its gates have held long
// enough to advance, and its store has not yet read b's writes: its first
// write, made before it acts, is refused, and a steps down without acting.
// The plan state stays as b left it, operator writes on b keep working,
// and a late SetTerm of a's old term does not make it evaluate again.
func TestFencingRefusesADeposedLeader(t *testing.T) {
	en := newEnv(t, nil)
	lagging := &laggingStore{Store: en.store}
	actA, actB := &rollouttest.Actions{}, &rollouttest.Actions{}
	var depA, depB deposals
	a := fencedEngine(t, en, lagging, actA, &depA)
	b := fencedEngine(t, en, en.store, actB, &depB)

	if err := a.SetTerm(en.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if st := storedState(t, en); st.LeaderEpoch != 1 {
		t.Fatalf("a took office under epoch 1; stored state carries %d", st.LeaderEpoch)
	}
	en.sig.Set("lag_seconds", 1)
	en.sig.Set("divergent_rows", 0)
	for end := en.clock.Now().Add(9 * time.Minute); en.clock.Now().Before(end); {
		en.clock.Add(10 * time.Second)
		if err := a.Tick(en.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.Status(); st.StageName != "canary" || st.Following {
		t.Fatalf("a before the freeze: stage %s following %v", st.StageName, st.Following)
	}

	// a freezes: its store stops following the topic. b takes office.
	lagging.Lag(en.ctx)
	if err := b.SetTerm(en.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Abort(en.ctx, "alice", "incident"); err != nil {
		t.Fatalf("operator abort on the new leader: %v", err)
	}
	want := storedState(t, en)
	if !want.Aborted || want.LeaderEpoch != 2 {
		t.Fatalf("b's state: aborted %v epoch %d", want.Aborted, want.LeaderEpoch)
	}

	// a wakes: its gates have now held 11 minutes of their 10.
	callsA := len(actA.Calls)
	before := len(en.audits(""))
	en.clock.Add(2 * time.Minute)
	err := a.Tick(en.ctx)
	var de *leader.DeposedError
	if !errors.Is(err, leader.ErrDeposed) || !errors.Is(err, rollout.ErrRefused) || !errors.As(err, &de) || de.Epoch != 1 || de.Current != 2 {
		t.Fatalf("a's first evaluation after waking: %v, want a DeposedError of epoch 1 against 2", err)
	}
	if lagging.reads == 0 || lagging.failed != 1 {
		t.Fatalf("a read %d stale states and had %d conditional writes refused; want the refusal to come from the write", lagging.reads, lagging.failed)
	}
	if got := storedState(t, en); got.Aborted != want.Aborted || got.StageName != want.StageName || got.LeaderEpoch != 2 ||
		got.Routes.Generation != want.Routes.Generation {
		t.Fatalf("stored state after a woke: %+v, want b's %+v", got, want)
	}
	if len(actA.Calls) != callsA {
		t.Fatalf("the deposed leader acted: %v", actA.Calls[callsA:])
	}
	if !a.Status().Following {
		t.Fatal("the deposed leader still evaluates the plan")
	}
	if d := depA.list(); len(d) != 1 || !errors.Is(d[0], leader.ErrDeposed) {
		t.Fatalf("a told its elector %v, want one deposal", d)
	}
	if es := en.audits("leader.fenced"); len(es) != 1 || es[0].Result != "refused" || es[0].Details["current_epoch"] != int64(2) {
		t.Fatalf("leader.fenced audit: %+v", es)
	}
	if after := en.audits(""); len(after) != before+1 || after[before].Action != "leader.fenced" {
		t.Fatalf("the deposed leader audited %+v after waking; want only its refusal", after[before:])
	}

	// The elector has not dropped the old term yet and hands it again: a
	// stays a follower. Following, it takes b's state.
	if err := a.SetTerm(en.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Tick(en.ctx); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); !st.Following || !st.Aborted {
		t.Fatalf("a after waking: following %v aborted %v, want b's aborted plan followed", st.Following, st.Aborted)
	}
	if _, err := a.Resume(en.ctx, "bob", "wrong daemon"); !errors.Is(err, rollout.ErrRefused) {
		t.Fatalf("an operator command on the deposed leader: %v, want refused", err)
	}

	// Operator writes on the leader are not fenced out: they carry its epoch.
	if _, err := b.Resume(en.ctx, "alice", "all clear"); err != nil {
		t.Fatalf("operator resume on the leader: %v", err)
	}
	if _, err := b.Advance(en.ctx, "alice", "go", true); err != nil {
		t.Fatalf("operator advance on the leader: %v", err)
	}
	if st := storedState(t, en); st.StageName != "tenth" || st.Aborted || st.LeaderEpoch != 2 {
		t.Fatalf("after the operator's writes: stage %s aborted %v epoch %d", st.StageName, st.Aborted, st.LeaderEpoch)
	}
	if len(depB.list()) != 0 || len(en.audits("leader.fenced")) != 1 {
		t.Fatal("the leader's own writes were fenced")
	}

	// A later term takes over from b: b's next action is refused in turn.
	if err := a.SetTerm(en.ctx, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Rollback(en.ctx, "alice", "too late", false); !errors.Is(err, leader.ErrDeposed) {
		t.Fatalf("a rollback on the leader of epoch 2 after epoch 3 took office: %v", err)
	}
	if st := storedState(t, en); st.LeaderEpoch != 3 || st.SoftRollback {
		t.Fatalf("after b was deposed: epoch %d soft rollback %v", st.LeaderEpoch, st.SoftRollback)
	}
}

// TestFencingOffWithoutElection: an engine without Deps.Deposed writes as
// before, whatever epoch the stored state carries (a daemon whose election
// was turned off after it ran).
func TestFencingOffWithoutElection(t *testing.T) {
	en := newEnv(t, nil)
	st := storedState(t, en)
	st.LeaderEpoch = 9
	if err := checkpoints.PutJSON(en.ctx, en.store, rollout.StateKey, st); err != nil {
		t.Fatal(err)
	}
	en.start()
	if _, err := en.e.Advance(en.ctx, "alice", "go", true); err != nil {
		t.Fatalf("advance without fencing: %v", err)
	}
	if got := storedState(t, en); got.StageName != "tenth" {
		t.Fatalf("stage %s, want tenth", got.StageName)
	}
}
