package checkpoints

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaCASAnyCompactionReachesTheSameState writes conditional and plain
// changes the ways daemons do (several writers racing on one key, deletes
// and re-creates, plain keys alongside), then replays the log as compaction
// may leave it: every record that a later record of the same key makes
// removable is removed or kept at random, and a tombstone goes only with
// every earlier record of its key — more freedom than Kafka's cleaner has,
// which removes from the oldest segments up. Every view must give every key
// the value and version the whole log gives.
func TestKafkaCASAnyCompactionReachesTheSameState(t *testing.T) {
	cases := []struct {
		name    string
		writers int
		changes int // per writer
		keys    int
		deletes bool
	}{
		{"one writer, one key", 1, 40, 1, false},
		{"one writer, keys deleted and re-created", 1, 40, 3, true},
		{"three writers racing on one key", 3, 20, 1, false},
		{"three writers, three keys, deletes", 3, 20, 3, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log := writeCASLog(t, tc.writers, tc.changes, tc.keys, tc.deletes)
			want := replay(log)
			casRecords := 0
			for _, r := range log {
				if strings.HasPrefix(string(r.Key), casPrefix) && r.Value != nil {
					casRecords++
				}
			}
			if casRecords == 0 {
				t.Fatal("no conditional records written")
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(log))))
			for view := 0; view < 300; view++ {
				kept := compactedView(log, rng, view == 0)
				got := replay(kept)
				for k, w := range want {
					g := got[k]
					if g == nil || g.present != w.present || g.version != w.version || string(g.value) != string(w.value) {
						t.Fatalf("view %d (%d of %d records): key %s is %s, the whole log says %s", view, len(kept), len(log), k, describe(g), describe(w))
					}
				}
				for k, g := range got {
					if want[k] == nil && g.present {
						t.Fatalf("view %d: key %s has a value the whole log does not have: %s", view, k, describe(g))
					}
				}
			}
		})
	}
}

// TestKafkaCASSettleDecidesAgain builds, record by record, the race that
// random runs seldom produce: a settle whose writer had not yet read a
// request that lands before it. The settle holds the older state; a reader
// that lost the records before the request must decide it again from the
// settle, or it would keep the older value.
func TestKafkaCASSettleDecidesAgain(t *testing.T) {
	const key = "intent/paused"
	var log []*kgo.Record
	add := func(rkey string, kind byte, payload any) {
		r := &kgo.Record{Key: []byte(rkey), Offset: int64(len(log))}
		if payload != nil {
			b, err := json.Marshal(payload)
			if err != nil {
				t.Fatal(err)
			}
			r.Value = appendFrame(nil, rkey, kind, "w", uint64(len(log)), b)
		}
		log = append(log, r)
	}
	add("_cas/a/1", kindCAS, casRecord{Key: key, Expect: 0, Value: []byte("a")})                                // 0: taken, version 1
	add("_cas/a/2", kindSettle, casSettle{Key: key, Through: 0, Version: 1, Present: true, Value: []byte("a")}) // 1
	add("_cas/a/1", 0, nil)                                                                                     // 2: tombstone
	add("_cas/b/1", kindCAS, casRecord{Key: key, Expect: 1, Value: []byte("b")})                                // 3: taken, version 4
	add("_cas/c/1", kindSettle, casSettle{Key: key, Through: 2, Version: 1, Present: true, Value: []byte("a")}) // 4: written before 3 was read
	add("_cas/a/2", 0, nil)                                                                                     // 5: the older settle tombstoned
	add("_cas/c/2", kindCAS, casRecord{Key: key, Expect: 1, Value: []byte("c")})                                // 6: refused, 4 came first
	want := replay(log)[key]
	if string(want.value) != "b" || want.version != 4 {
		t.Fatalf("whole log: %s, want \"b\" at version 4", describe(want))
	}
	rng := rand.New(rand.NewPCG(2, 2))
	for view := 0; view < 200; view++ {
		kept := compactedView(log, rng, view == 0)
		if g := replay(kept)[key]; g == nil || string(g.value) != "b" || g.version != 4 {
			t.Fatalf("view %d (%d records): %s, want \"b\" at version 4", view, len(kept), describe(g))
		}
	}
}

func describe(e *kafkaEntry) string {
	if e == nil {
		return "unknown"
	}
	if !e.present {
		return fmt.Sprintf("absent at version %d", e.version)
	}
	return fmt.Sprintf("%q at version %d", e.value, e.version)
}

// writeCASLog makes the changes through real stores on an in-process broker
// and returns every record of the topic, in log order.
func writeCASLog(t *testing.T, writers, changes, keys int, deletes bool) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kf, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()
	kopts := []kgo.Opt{kgo.SeedBrokers(kf.ListenAddrs()...)}
	quiet := KafkaLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var wg sync.WaitGroup
	var stores []*KafkaStore
	for w := 0; w < writers; w++ {
		s, err := OpenKafka(ctx, "cp", kopts, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < changes; i++ {
				key := fmt.Sprintf("intent/k%d", i%keys)
				err := Update(ctx, s, key, func(old []byte, found bool) ([]byte, error) {
					if deletes && i%7 == 6 {
						return nil, nil
					}
					return fmt.Appendf(nil, "w%d-%d", w, i), nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if i%5 == 0 {
					if err := s.Put(ctx, fmt.Sprintf("mark/w%d", w), fmt.Appendf(nil, "%d", i)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Every outcome was collected: a settle deciding a record again must
	// not leave one behind for a writer that is no longer waiting.
	for i, s := range stores {
		s.mu.Lock()
		n := len(s.casResults)
		s.mu.Unlock()
		if n != 0 {
			t.Fatalf("writer %d holds %d uncollected outcomes", i, n)
		}
	}
	return fetchAll(t, ctx, kopts, "cp")
}

func fetchAll(t *testing.T, ctx context.Context, kopts []kgo.Opt, topic string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	end := ends[topic][0].Offset
	var out []*kgo.Record
	for len(out) == 0 || out[len(out)-1].Offset+1 < end {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("reading %s: %v", topic, err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// compactedView returns a subset of log that compaction could leave: a
// record goes only if a later record has its key, a tombstone only once
// every earlier record of its key has gone. all removes everything it may.
func compactedView(log []*kgo.Record, rng *rand.Rand, all bool) []*kgo.Record {
	laterSameKey := make([]bool, len(log))
	seen := map[string]bool{}
	for i := len(log) - 1; i >= 0; i-- {
		k := string(log[i].Key)
		laterSameKey[i] = seen[k]
		seen[k] = true
	}
	remaining := map[string]int{} // records of each key still kept before i
	var out []*kgo.Record
	for i, r := range log {
		k := string(r.Key)
		drop := false
		switch {
		case laterSameKey[i]:
			drop = all || rng.IntN(2) == 0
		case r.Value == nil:
			drop = remaining[k] == 0 && (all || rng.IntN(2) == 0)
		}
		if !drop {
			out = append(out, r)
			remaining[k]++
		}
	}
	return out
}

// replay applies records as a store opening on them would and returns the
// state of every key.
func replay(records []*kgo.Record) map[string]*kafkaEntry {
	s := &KafkaStore{
		cfg:        kafkaConfig{log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		byKey:      kgo.StickyKeyPartitioner(nil).ForTopic("cp"),
		kv:         map[string]*kafkaEntry{},
		applied:    map[int32]int64{},
		casResults: map[string]bool{},
		casKeys:    map[string]*casLog{},
		casOwner:   map[string]string{},
		parts:      1,
		damaged:    damagedMetric,
	}
	for _, r := range records {
		s.applyLocked(r)
	}
	return s.kv
}
