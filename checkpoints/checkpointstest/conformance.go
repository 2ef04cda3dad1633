package checkpointstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Opener opens handles on one store's state. Each call returns a new handle
// where the implementation has such a thing (another process, a restart): a
// file store on the same directory, a Kafka store on the same topic. The
// opener closes its handles at the end of the test.
type Opener func(t *testing.T) checkpoints.Store

// Conformance runs the checks every checkpoints.Store must pass. fresh returns
// an Opener on new, empty state each time it is called.
//
// Handles that learn of other handles' writes asynchronously (the Kafka store
// reads them back from the topic) are given until Converge to agree.
func Conformance(t *testing.T, fresh func(t *testing.T) Opener) {
	t.Run("KeyValue", func(t *testing.T) { testKeyValue(t, fresh(t)) })
	t.Run("Audit", func(t *testing.T) { testAudit(t, fresh(t)) })
	t.Run("Reopen", func(t *testing.T) { testReopen(t, fresh(t)) })
	t.Run("TwoWriters", func(t *testing.T) { testTwoWriters(t, fresh(t)) })
	t.Run("AuditChain", func(t *testing.T) { testAuditChain(t, fresh(t)) })
	t.Run("CompareAndSwap", func(t *testing.T) { testCompareAndSwap(t, fresh(t)) })
	t.Run("Counter", func(t *testing.T) { testCounter(t, fresh(t)) })
}

// testCounter has two handles with four goroutines each increment one
// counter through Update as fast as they can: the counter must end at the
// number of increments that returned nil, on both handles. A read whose
// value and version come from two different moments loses increments (the
// Kafka store's GetVersion did, about once in 500 runs of CompareAndSwap;
// this contention showed it in one run in ten).
func testCounter(t *testing.T, open Opener) {
	const perG, goroutines = 20, 6
	c := ctx(t)
	stores := []checkpoints.Store{open(t), open(t)}
	var wg sync.WaitGroup
	var done atomic.Int64
	for _, st := range stores {
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perG {
					for attempt := 0; ; attempt++ {
						_, err := checkpoints.UpdateJSON(c, st, "intent/counter", func(n int64, _ bool) (int64, error) { return n + 1, nil })
						if err == nil {
							done.Add(1)
							break
						}
						if !errors.Is(err, checkpoints.ErrConflict) || attempt > 20 {
							t.Errorf("increment: %v", err)
							return
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	if done.Load() != 2*goroutines*perG {
		t.Fatalf("%d increments succeeded, want %d", done.Load(), 2*goroutines*perG)
	}
	eventually(t, func() error {
		for i, st := range stores {
			n, _, err := checkpoints.GetJSON[int64](c, st, "intent/counter")
			if err != nil {
				return err
			}
			if n != done.Load() {
				return fmt.Errorf("handle %d: counter %d after %d increments", i, n, done.Load())
			}
		}
		return nil
	})
}

// testAuditChain appends through two chained handles at once, as two
// daemons do, and checks that every handle verifies the whole chain, and
// that an entry added to the store without the key breaks it.
func testAuditChain(t *testing.T, open Opener) {
	const perWriter = 15
	c := ctx(t)
	key := []byte("conformance-key-0123456789abcdef0123")
	raw := []checkpoints.Store{open(t), open(t)}
	var wg sync.WaitGroup
	for w, s := range raw {
		ch, err := checkpoints.WithAuditChain(s, key)
		must(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				if err := ch.Append(c, checkpoints.AuditEntry{Actor: fmt.Sprint("writer-", w), Action: "pause", Result: "ok",
					Details: map[string]any{"i": i, "big": uint64(1)<<63 + 1, "partitions": []int32{0, 7}}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	verify := func(want int, intact bool) error {
		for i, s := range raw {
			ch, _ := checkpoints.WithAuditChain(s, key)
			rep, err := ch.Verify(c)
			if err != nil {
				return err
			}
			if rep.Entries != want || rep.Intact() != intact || intact && rep.Verified != want {
				return fmt.Errorf("handle %d: %d entries, %d verified, breaks %v; want %d, intact %v", i, rep.Entries, rep.Verified, rep.Breaks, want, intact)
			}
		}
		return nil
	}
	eventually(t, func() error { return verify(2*perWriter, true) })
	// Written straight to the store: no MAC.
	must(t, raw[0].Append(c, checkpoints.AuditEntry{Actor: "alice", Action: "rewind", Result: "ok", Reason: "forged"}))
	eventually(t, func() error { return verify(2*perWriter+1, false) })
}

func eventually(t *testing.T, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(Converge); ; time.Sleep(20 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", Converge, err)
		}
	}
}

// Converge bounds how long two handles may disagree after both finished writing.
var Converge = 10 * time.Second

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testKeyValue(t *testing.T, open Opener) {
	c, s := ctx(t), open(t)
	if _, err := s.Get(c, "capture/a.b"); !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("missing key: got %v, want ErrNotFound", err)
	}
	must(t, checkpoints.PutJSON(c, s, "capture/a.b", map[string]int{"n": 1}))
	must(t, s.Put(c, "capture/a.b", []byte(`{"n":2}`)))
	v, ok, err := checkpoints.GetJSON[map[string]int](c, s, "capture/a.b")
	if err != nil || !ok || v["n"] != 2 {
		t.Fatalf("get after overwrite: %v %v %v", v, ok, err)
	}

	// Values are bytes: newlines, NULs, invalid UTF-8 and emptiness survive.
	odd := []byte("line1\nline2\x00\xff\xfe tmck1 v x 1 0 0000000000000000\n")
	for k, want := range map[string][]byte{"mark/t/0": odd, "mark/t/1": {}, "marker": []byte("x"), "mar": []byte("y")} {
		must(t, s.Put(c, k, want))
		got, err := s.Get(c, k)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: got %q %v, want %q", k, got, err, want)
		}
	}

	// The store keeps its own copies.
	in := []byte("original")
	must(t, s.Put(c, "intent/paused", in))
	copy(in, "CHANGED!")
	out, _ := s.Get(c, "intent/paused")
	copy(out, "CHANGED!")
	if got, _ := s.Get(c, "intent/paused"); string(got) != "original" {
		t.Fatalf("store shares its memory with callers: %q", got)
	}

	l, err := s.List(c, "mark/")
	must(t, err)
	if empty, ok := l["mark/t/1"]; len(l) != 2 || !bytes.Equal(l["mark/t/0"], odd) || !ok || len(empty) != 0 {
		t.Fatalf("list mark/: %q", l)
	}
	all, err := s.List(c, "")
	must(t, err)
	if len(all) != 6 {
		t.Fatalf("list all: %d keys, want 6: %q", len(all), keys(all))
	}

	must(t, s.Delete(c, "capture/a.b"))
	must(t, s.Delete(c, "capture/never-written"))
	if _, err := s.Get(c, "capture/a.b"); !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("deleted key: got %v, want ErrNotFound", err)
	}
	if l, _ := s.List(c, "capture/"); len(l) != 0 {
		t.Fatalf("list after delete: %q", keys(l))
	}
	must(t, s.Put(c, "capture/a.b", []byte("again")))
	if got, err := s.Get(c, "capture/a.b"); err != nil || string(got) != "again" {
		t.Fatalf("put after delete: %q %v", got, err)
	}
}

func testAudit(t *testing.T, open Opener) {
	c, s := ctx(t), open(t)
	if es, err := s.Audit(c, checkpoints.AuditFilter{}); err != nil || len(es) != 0 {
		t.Fatalf("empty audit: %v %v", es, err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 6; i++ {
		must(t, s.Append(c, checkpoints.AuditEntry{Time: t0.Add(time.Duration(i) * time.Minute), Actor: fmt.Sprint("op", i%2),
			Action: []string{"pause", "resume"}[i/3], Reason: fmt.Sprint("r", i), Result: "ok",
			Details: map[string]any{"i": float64(i), "partitions": []any{float64(1), float64(2)}}}))
	}
	before := time.Now()
	must(t, s.Append(c, checkpoints.AuditEntry{Actor: "auto:rollout", Action: "trigger.fire", Result: "ok"}))

	all, err := s.Audit(c, checkpoints.AuditFilter{})
	must(t, err)
	if len(all) != 7 {
		t.Fatalf("audit has %d entries, want 7", len(all))
	}
	for i, e := range all[:6] {
		if !e.Time.Equal(t0.Add(time.Duration(i)*time.Minute)) || e.Reason != fmt.Sprint("r", i) || e.Details["i"] != float64(i) {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	if last := all[6]; last.Time.IsZero() || last.Time.Before(before.Add(-time.Second)) || last.Actor != "auto:rollout" {
		t.Fatalf("a zero Time is set on Append: %+v", last)
	}
	for _, tc := range []struct {
		f    checkpoints.AuditFilter
		want []string // reasons
	}{
		{checkpoints.AuditFilter{Actor: "op1"}, []string{"r1", "r3", "r5"}},
		{checkpoints.AuditFilter{Action: "resume"}, []string{"r3", "r4", "r5"}},
		{checkpoints.AuditFilter{Actor: "op0", Action: "pause"}, []string{"r0", "r2"}},
		{checkpoints.AuditFilter{Since: t0.Add(2 * time.Minute), Until: t0.Add(4 * time.Minute)}, []string{"r2", "r3"}},
		{checkpoints.AuditFilter{Until: t0.Add(10 * time.Minute), Limit: 2}, []string{"r4", "r5"}},
	} {
		es, err := s.Audit(c, tc.f)
		must(t, err)
		var got []string
		for _, e := range es {
			got = append(got, e.Reason)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Audit(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}
}

func testReopen(t *testing.T, open Opener) {
	c, s := ctx(t), open(t)
	must(t, s.Put(c, "verified/t/0", []byte("v1")))
	must(t, s.Put(c, "verified/t/0", []byte("v2")))
	must(t, s.Put(c, "verified/t/1", []byte("gone")))
	must(t, s.Delete(c, "verified/t/1"))
	must(t, s.Append(c, checkpoints.AuditEntry{Actor: "op", Action: "rewind", Result: "ok"}))
	must(t, s.Close())

	r := open(t)
	if got, err := r.Get(c, "verified/t/0"); err != nil || string(got) != "v2" {
		t.Fatalf("after reopen: %q %v, want v2", got, err)
	}
	if _, err := r.Get(c, "verified/t/1"); !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("deleted key after reopen: %v", err)
	}
	if es, err := r.Audit(c, checkpoints.AuditFilter{}); err != nil || len(es) != 1 || es[0].Action != "rewind" {
		t.Fatalf("audit after reopen: %+v %v", es, err)
	}
}

// testTwoWriters runs two handles, as two daemons would, writing overlapping
// keys and audit entries at once. Each writer's own writes to a key are
// ordered, so the final value of a key is the last value of one of the two
// writers; both handles must end up agreeing on it, and every audit entry of
// both must be there exactly once.
func testTwoWriters(t *testing.T, open Opener) {
	const perWriter, nkeys = 60, 4
	c := ctx(t)
	stores := []checkpoints.Store{open(t), open(t)}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				k := fmt.Sprintf("mark/shared/%d", i%nkeys)
				v := fmt.Sprintf("writer-%d-%03d", w, i)
				if err := s.Put(c, k, []byte(v)); err != nil {
					errs <- err
					return
				}
				// Read your writes: this writer's value, or a newer one of the other.
				got, err := s.Get(c, k)
				if err != nil || string(got) != v && !bytes.HasPrefix(got, fmt.Appendf(nil, "writer-%d-", 1-w)) {
					errs <- fmt.Errorf("writer %d: Get(%s) after Put(%s) = %q %v", w, k, v, got, err)
					return
				}
				if err := s.Append(c, checkpoints.AuditEntry{Actor: fmt.Sprint("writer-", w), Action: "put", Target: v, Result: "ok"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// lastOf[key] holds the last value each writer put under key.
	lastOf := map[string][2]string{}
	for i := perWriter - nkeys; i < perWriter; i++ {
		k := fmt.Sprintf("mark/shared/%d", i%nkeys)
		lastOf[k] = [2]string{fmt.Sprintf("writer-0-%03d", i), fmt.Sprintf("writer-1-%03d", i)}
	}
	var problem error
	for deadline := time.Now().Add(Converge); ; time.Sleep(20 * time.Millisecond) {
		if problem = agree(c, stores, nkeys, perWriter, lastOf); problem == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", Converge, problem)
		}
	}
}

func agree(c context.Context, stores []checkpoints.Store, nkeys, perWriter int, lastOf map[string][2]string) error {
	var views [2]map[string][]byte
	for i, s := range stores {
		l, err := s.List(c, "mark/shared/")
		if err != nil {
			return err
		}
		views[i] = l
	}
	if len(views[0]) != nkeys || fmt.Sprint(views[0]) != fmt.Sprint(views[1]) {
		return fmt.Errorf("the two handles disagree: %q vs %q", views[0], views[1])
	}
	for k, v := range views[0] {
		if last := lastOf[k]; string(v) != last[0] && string(v) != last[1] {
			return fmt.Errorf("%s = %q, which is not the last value of either writer (%q)", k, v, last)
		}
	}
	for i, s := range stores {
		es, err := s.Audit(c, checkpoints.AuditFilter{Action: "put"})
		if err != nil {
			return err
		}
		seen := map[string]int{}
		for _, e := range es {
			seen[e.Target]++
		}
		if len(es) != 2*perWriter || len(seen) != 2*perWriter {
			return fmt.Errorf("handle %d has %d audit entries (%d distinct), want %d", i, len(es), len(seen), 2*perWriter)
		}
	}
	return nil
}

func keys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// testCompareAndSwap checks the conditional write, then has two handles
// (two daemons) with three goroutines each add their own members to one
// set under one key through Update at the same time: every update that
// returned nil must be in the final set on both handles, none lost.
func testCompareAndSwap(t *testing.T, open Opener) {
	c, s := ctx(t), open(t)
	_, v0, err := s.GetVersion(c, "intent/paused")
	if !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	v1, err := s.CompareAndSwap(c, "intent/paused", v0, []byte("a"))
	must(t, err)
	if _, err := s.CompareAndSwap(c, "intent/paused", v0, []byte("b")); !errors.Is(err, checkpoints.ErrConflict) {
		t.Fatalf("a stale create: %v, want ErrConflict", err)
	}
	if got, v, err := s.GetVersion(c, "intent/paused"); err != nil || string(got) != "a" || v != v1 {
		t.Fatalf("after a refused swap: %q %d %v, want a %d", got, v, err, v1)
	}
	must(t, s.Put(c, "intent/paused", []byte("p")))
	if _, err := s.CompareAndSwap(c, "intent/paused", v1, []byte("c")); !errors.Is(err, checkpoints.ErrConflict) {
		t.Fatalf("a swap over a Put it did not read: %v, want ErrConflict", err)
	}
	_, v2, _ := s.GetVersion(c, "intent/paused")
	if _, err := s.CompareAndSwap(c, "intent/paused", v2, nil); err != nil {
		t.Fatalf("a swap to nil deletes: %v", err)
	}
	if _, err := s.Get(c, "intent/paused"); !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("after a delete by swap: %v", err)
	}
	if _, err := s.CompareAndSwap(c, "_cas/x", 0, []byte("x")); err == nil && fmt.Sprintf("%T", s) == "*checkpoints.KafkaStore" {
		t.Fatal("a reserved key accepted")
	}

	const perG, goroutines = 5, 3
	stores := []checkpoints.Store{s, open(t)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	okd := map[string]bool{}
	for h, st := range stores {
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perG; i++ {
					member := fmt.Sprintf("h%d-g%d-%d", h, g, i)
					for attempt := 0; ; attempt++ {
						_, err := checkpoints.UpdateJSON(c, st, "intent/set", func(v map[string]bool, _ bool) (map[string]bool, error) {
							if v == nil {
								v = map[string]bool{}
							}
							v[member] = true
							return v, nil
						})
						if err == nil {
							mu.Lock()
							okd[member] = true
							mu.Unlock()
							break
						}
						if !errors.Is(err, checkpoints.ErrConflict) || attempt > 20 {
							t.Errorf("update %s: %v", member, err)
							return
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	if len(okd) != 2*goroutines*perG {
		t.Fatalf("%d updates succeeded, want %d", len(okd), 2*goroutines*perG)
	}
	eventually(t, func() error {
		for i, st := range stores {
			got, _, err := checkpoints.GetJSON[map[string]bool](c, st, "intent/set")
			if err != nil {
				return err
			}
			for m := range okd {
				if !got[m] {
					return fmt.Errorf("handle %d: %s was updated ok but is not in the set (%d members)", i, m, len(got))
				}
			}
		}
		return nil
	})
}
