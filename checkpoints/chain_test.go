package checkpoints_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
)

var chainKey = []byte("0123456789abcdef0123456789abcdef-test-key")

// TestAuditChainFindsEveryKindOfTampering writes a chain of six entries,
// lets someone with write access to the storage (but not the key) change it
// in one way per case, and checks that verification names the first broken
// link, and the metric counts it.
func TestAuditChainFindsEveryKindOfTampering(t *testing.T) {
	forge := func(e checkpoints.AuditEntry) checkpoints.AuditEntry {
		e.Actor, e.Reason = "alice", "approved by alice"
		return e
	}
	cases := []struct {
		name   string
		edit   func([]checkpoints.AuditEntry) []checkpoints.AuditEntry
		kind   string
		index  int
		reason string // the Reason of the entry named
	}{
		{"intact", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry { return es }, "", 0, ""},
		{"an entry added without the key", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			return append(es[:3:3], append([]checkpoints.AuditEntry{{Time: es[2].Time, Actor: "alice", Action: "POST /v1/rewind", Reason: "forged", Result: "ok"}}, es[3:]...)...)
		}, checkpoints.BreakUnsigned, 3, "forged"},
		{"an entry altered", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[2] = forge(es[2])
			return es
		}, checkpoints.BreakForged, 2, "approved by alice"},
		{"an entry with a made-up MAC", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			f := forge(es[4])
			l := *f.Chain
			l.ID, l.MAC = "feedfeedfeedfeedfeedfeed", strings.Repeat("ab", 32)
			f.Chain = &l
			return append(es, f)
		}, checkpoints.BreakForged, 6, "approved by alice"},
		{"an entry deleted", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			return append(es[:2:2], es[3:]...)
		}, checkpoints.BreakMissing, 2, "r3"},
		{"the first entry deleted", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry { return es[1:] }, checkpoints.BreakMissing, 0, "r1"},
		{"two entries swapped", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[1], es[2] = es[2], es[1]
			return es
		}, checkpoints.BreakReordered, 1, "r2"},
		{"an entry replayed", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry { return append(es, es[1]) }, checkpoints.BreakDuplicate, 6, "r1"},
		{"the chain stripped", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[4].Chain = nil
			return es
		}, checkpoints.BreakUnsigned, 4, "r4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			mem := checkpointstest.New()
			reg := prometheus.NewRegistry()
			c, err := checkpoints.WithAuditChain(mem, chainKey, checkpoints.ChainRegisterer(reg))
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
			for i := 0; i < 6; i++ {
				err := c.Append(ctx, checkpoints.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second), Actor: "bob", Action: "POST /v1/pause",
					Reason: fmt.Sprint("r", i), Result: "ok", Details: map[string]any{"partitions": []int32{1, 2}, "n": int64(1) << 60}})
				if err != nil {
					t.Fatal(err)
				}
			}
			mem.Tamper(tc.edit)
			rep, err := c.Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			broken := testutil.ToFloat64(c.Metrics()[0])
			if tc.kind == "" {
				if !rep.Intact() || rep.Verified != 6 || len(rep.Head) != 1 || broken != 0 {
					t.Fatalf("an untouched chain: %+v (broken links %v)", rep, broken)
				}
				return
			}
			if rep.Intact() {
				t.Fatalf("not detected: %+v", rep)
			}
			b := rep.Breaks[0]
			if b.Kind != tc.kind || b.Index != tc.index || b.Entry.Reason != tc.reason {
				t.Fatalf("first break %s, want %s at entry %d (reason %s); all: %v", b, tc.kind, tc.index, tc.reason, rep.Breaks)
			}
			if broken < 1 || testutil.ToFloat64(c.Metrics()[1]) < 1 {
				t.Fatalf("the metrics do not show the break: %v", broken)
			}
			// Reading the log through the store verifies too, and shows
			// the entries as they are.
			if _, err := c.Audit(ctx, checkpoints.AuditFilter{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAuditChainWithConcurrentAppenders: two daemons (two Chained over one
// store) and several goroutines each append at once. Forks are allowed, the
// chain stays intact, and afterwards one entry heads it again.
func TestAuditChainWithConcurrentAppenders(t *testing.T) {
	ctx := context.Background()
	mem := checkpointstest.New()
	var wg sync.WaitGroup
	for d := 0; d < 2; d++ {
		c, err := checkpoints.WithAuditChain(mem, chainKey)
		if err != nil {
			t.Fatal(err)
		}
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20; i++ {
					if err := c.Append(ctx, checkpoints.AuditEntry{Actor: fmt.Sprint("d", d), Action: "x", Result: "ok"}); err != nil {
						t.Error(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	c, _ := checkpoints.WithAuditChain(mem, chainKey)
	if err := c.Append(ctx, checkpoints.AuditEntry{Actor: "last", Action: "x", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Verify(ctx)
	if err != nil || !rep.Intact() || rep.Verified != 161 || len(rep.Head) != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	// Another key cannot vouch for any of it.
	other, _ := checkpoints.WithAuditChain(mem, []byte(strings.Repeat("k", 32)))
	if rep, _ := other.Verify(ctx); rep.Verified != 0 || len(rep.Breaks) != 161 {
		t.Fatalf("a different key verified %d entries", rep.Verified)
	}
}

func TestAuditChainKeepsUnchainedPrefix(t *testing.T) {
	ctx := context.Background()
	mem := checkpointstest.New()
	mem.Append(ctx, checkpoints.AuditEntry{Actor: "old", Action: "x", Result: "ok"})
	c, _ := checkpoints.WithAuditChain(mem, chainKey)
	c.Append(ctx, checkpoints.AuditEntry{Actor: "new", Action: "x", Result: "ok"})
	if rep, _ := c.Verify(ctx); !rep.Intact() || rep.Unchained != 1 || rep.Verified != 1 {
		t.Fatalf("%+v", rep)
	}
	if _, err := checkpoints.WithAuditChain(mem, []byte("short")); err == nil {
		t.Fatal("a short key accepted")
	}
	for in, ok := range map[string]bool{strings.Repeat("ab", 32): true, strings.Repeat("z", 32): true, "abc": false, strings.Repeat("ab", 10): false} {
		if _, err := checkpoints.ParseChainKey(in); (err == nil) != ok {
			t.Errorf("ParseChainKey(%q): %v", in, err)
		}
	}
}

// countingStore counts full reads of the audit log, to tell Append's
// incremental check from a verification of the whole chain.
type countingStore struct {
	*checkpointstest.Memory
	mu   sync.Mutex
	full int
}

func (s *countingStore) AuditLog(ctx context.Context) ([]checkpoints.AuditEntry, error) {
	s.mu.Lock()
	s.full++
	s.mu.Unlock()
	return s.Memory.AuditLog(ctx)
}

func (s *countingStore) fullReads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full
}

// TestAuditChainAppendChecksWhatIsNew: daemon A appends, then daemon B
// appends entries A has not read yet, then someone without the key changes
// the log, then A appends again. A reads only the new entries while the
// chain is intact; whatever was done to entries it had not verified yet (or
// to the ones it had, where that moves them) makes it verify the whole
// chain: the break is counted and logged at once, and A's new entry names
// only intact entries. An entry A verified before and that is altered in
// place is not re-checked by Append: Verify (run every minute, on every read
// and by tidemark audit verify) finds it.
func TestAuditChainAppendChecksWhatIsNew(t *testing.T) {
	forge := func(e checkpoints.AuditEntry) checkpoints.AuditEntry {
		e.Reason = "approved by alice"
		return e
	}
	cases := []struct {
		name string
		// edit changes the log: entries 0-3 are A's (A verified 0-2
		// before appending 3), 4-6 are B's.
		edit func([]checkpoints.AuditEntry) []checkpoints.AuditEntry
		kind string // the first break Verify names; "" for none
		// atAppend: A's append itself found the break (a full check).
		atAppend bool
	}{
		{"intact", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry { return es }, "", false},
		{"a new entry altered", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[5] = forge(es[5])
			return es
		}, checkpoints.BreakForged, true},
		{"the newest entry altered", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[6] = forge(es[6])
			return es
		}, checkpoints.BreakForged, true},
		{"an unsigned entry added", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			return append(es, checkpoints.AuditEntry{Time: es[6].Time, Actor: "alice", Action: "POST /v1/rewind", Result: "ok"})
		}, checkpoints.BreakUnsigned, true},
		{"a new entry deleted", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			return append(es[:5:5], es[6:]...)
		}, checkpoints.BreakMissing, true},
		{"a new entry replayed", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry { return append(es, es[5]) }, checkpoints.BreakDuplicate, true},
		{"two new entries swapped", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[4], es[5] = es[5], es[4]
			return es
		}, checkpoints.BreakReordered, true},
		{"a verified entry deleted", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			return append(es[:1:1], es[2:]...)
		}, checkpoints.BreakMissing, true},
		{"A's own newest entry altered", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[3] = forge(es[3])
			return es
		}, checkpoints.BreakForged, true},
		{"the last verified entry altered", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[2] = forge(es[2])
			return es
		}, checkpoints.BreakForged, true},
		{"an earlier verified entry altered in place", func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
			es[1] = forge(es[1])
			return es
		}, checkpoints.BreakForged, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store := &countingStore{Memory: checkpointstest.New()}
			reg := prometheus.NewRegistry()
			a, err := checkpoints.WithAuditChain(store, chainKey, checkpoints.ChainRegisterer(reg))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := checkpoints.WithAuditChain(store, chainKey)
			appendN := func(c *checkpoints.Chained, who string, n int) {
				for i := 0; i < n; i++ {
					if err := c.Append(ctx, checkpoints.AuditEntry{Actor: who, Action: "POST /v1/pause", Reason: fmt.Sprint(who, i), Result: "ok"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			appendN(a, "a", 4)
			appendN(b, "b", 3)
			if n := store.fullReads(); n != 0 {
				t.Fatalf("appends to an intact chain read the whole log %d times", n)
			}
			var forged string
			store.Tamper(func(es []checkpoints.AuditEntry) []checkpoints.AuditEntry {
				reasons := map[string]string{}
				for _, e := range es {
					reasons[e.Chain.ID] = e.Reason
				}
				out := tc.edit(es)
				for _, e := range out {
					if e.Chain != nil && e.Reason != reasons[e.Chain.ID] {
						forged = e.Chain.MAC
					}
				}
				return out
			})
			appendN(a, "a-after", 1)
			if got := store.fullReads() > 0; got != tc.atAppend {
				t.Fatalf("append checked the whole chain: %v, want %v", got, tc.atAppend)
			}
			if got := testutil.ToFloat64(a.Metrics()[1]) > 0; got != tc.atAppend {
				t.Fatalf("append counted a break: %v, want %v", got, tc.atAppend)
			}
			log, _ := store.Memory.AuditLog(ctx)
			newest := log[len(log)-1]
			for _, p := range newest.Chain.Prev {
				if forged != "" && p == forged {
					t.Fatalf("the new entry names the altered entry")
				}
			}
			rep, err := a.Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.kind == "" {
				if !rep.Intact() || rep.Verified != 8 || len(rep.Head) != 1 || rep.Head[0] != newest.Chain.MAC {
					t.Fatalf("intact chain: %+v", rep)
				}
				return
			}
			if rep.Intact() || rep.Breaks[0].Kind != tc.kind {
				t.Fatalf("Verify: %+v, want a %s break first", rep, tc.kind)
			}
			// The chain goes on from the intact entries: one more append
			// adds no break and reads only what is new.
			before, reads := len(rep.Breaks), store.fullReads()
			appendN(a, "a-later", 1)
			if store.fullReads() != reads {
				t.Fatalf("the append after a break read the whole log again")
			}
			if rep, _ := a.Verify(ctx); len(rep.Breaks) != before {
				t.Fatalf("breaks went from %d to %d: %v", before, len(rep.Breaks), rep.Breaks)
			}
		})
	}
}

// BenchmarkChainedAppend appends to chains of 100 and 10,000 entries in the
// Kafka store's in-memory form (checkpointstest.Memory): the cost of an
// append must not grow with the chain. of-baseline is the 10,000-entry
// chain's cost per append over the 100-entry one's.
func BenchmarkChainedAppend(b *testing.B) {
	ctx := context.Background()
	var base float64
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprint("entries=", n), func(b *testing.B) {
			mem := checkpointstest.New()
			c, err := checkpoints.WithAuditChain(mem, chainKey)
			if err != nil {
				b.Fatal(err)
			}
			e := checkpoints.AuditEntry{Actor: "bench", Action: "POST /v1/pause", Target: "tm.app.users/3", Reason: "incident 42", Result: "ok",
				Details: map[string]any{"partitions": []int32{1, 2, 3}}}
			for i := 0; i < n; i++ {
				if err := c.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
			per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			if n == 100 {
				base = per // the last, longest run's
			}
			b.ReportMetric(per/base, "of-baseline")
		})
	}
}
