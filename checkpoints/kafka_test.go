package checkpoints_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

var quiet = checkpoints.KafkaLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

// fakeKafka starts an in-process broker, closed at cleanup.
func fakeKafka(t *testing.T) (*kfake.Cluster, []kgo.Opt) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
}

func openKafka(t *testing.T, kopts []kgo.Opt, topic string, opts ...checkpoints.KafkaOption) *checkpoints.KafkaStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := checkpoints.OpenKafka(ctx, topic, kopts, append([]checkpoints.KafkaOption{quiet}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the shared suite on every store.
func TestConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		checkpointstest.Conformance(t, func(t *testing.T) checkpointstest.Opener {
			m := checkpointstest.New()
			return func(*testing.T) checkpoints.Store { return m }
		})
	})
	t.Run("file", func(t *testing.T) {
		checkpointstest.Conformance(t, func(t *testing.T) checkpointstest.Opener {
			dir := t.TempDir()
			return func(t *testing.T) checkpoints.Store {
				s, err := checkpoints.OpenFile(dir)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
		})
	})
	for _, parts := range []int32{1, 3} {
		t.Run(fmt.Sprintf("kafka-%d-partitions", parts), func(t *testing.T) {
			_, kopts := fakeKafka(t)
			n := 0
			checkpointstest.Conformance(t, func(t *testing.T) checkpointstest.Opener {
				n++
				topic := fmt.Sprintf("checkpoints-%d", n)
				return func(t *testing.T) checkpoints.Store {
					return openKafka(t, kopts, topic, checkpoints.KafkaPartitions(parts))
				}
			})
		})
	}
}

// rawClient produces and consumes the topic directly, as a foreign or broken
// writer (or an operator's tool) would.
func rawClient(t *testing.T, kopts []kgo.Opt, topic string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append(kopts, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func admin(t *testing.T, kopts []kgo.Opt) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

func produce(t *testing.T, cl *kgo.Client, key string, value []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(key), Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// readAll returns every record of topic, in log order per partition.
func readAll(t *testing.T, kopts []kgo.Opt, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	adm := admin(t, kopts)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	cl := rawClient(t, kopts, topic)
	var out []*kgo.Record
	done := func() bool {
		ok := true
		ends.Each(func(o kadm.ListedOffset) {
			var last int64 = -1
			for _, r := range out {
				if r.Partition == o.Partition && r.Offset > last {
					last = r.Offset
				}
			}
			if last+1 < o.Offset {
				ok = false
			}
		})
		return ok
	}
	for !done() {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("reading %s: %v", topic, err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// TestKafkaDamagedRecordKeepsPrevious produces records a crash, a foreign
// writer or a newer version could leave in the topic. Each is detected, the key
// keeps its previous intact value, in the open store and after a restart; once
// compaction has removed the intact value, Get says so instead of pretending
// the key is missing, and a Put repairs it.
func TestKafkaDamagedRecordKeepsPrevious(t *testing.T) {
	ctx := context.Background()
	kf, kopts := fakeKafka(t)
	s := openKafka(t, kopts, "cp")
	raw := rawClient(t, kopts, "cp")

	if err := s.Put(ctx, "capture/app.users", []byte(`{"token":"good"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "mark/x/0", []byte(`{"offset":7}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, checkpoints.AuditEntry{Actor: "op", Action: "before", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	var good, goodMark *kgo.Record // intact records as the store wrote them
	for _, r := range readAll(t, kopts, "cp") {
		switch string(r.Key) {
		case "capture/app.users":
			good = r
		case "mark/x/0":
			goodMark = r
		}
	}
	if good == nil || goodMark == nil {
		t.Fatal("the store's records are not in the topic")
	}
	if rec, err := checkpoints.ParseKafkaRecord(good.Key, good.Value); err != nil || rec.Kind != "value" || string(rec.Payload) != `{"token":"good"}` || rec.Seq == 0 || rec.Writer == "" {
		t.Fatalf("ParseKafkaRecord(intact) = %+v, %v", rec, err)
	}

	flipped := bytes.Clone(good.Value)
	flipped[len(flipped)-3] ^= 0x20
	damaged := map[string][]byte{
		"torn: cut in the payload":   good.Value[:len(good.Value)-4],
		"torn: cut in the header":    good.Value[:12],
		"a flipped bit":              flipped,
		"not framed (foreign tool)":  []byte(`{"token":"forged"}`),
		"empty":                      {},
		"another key's intact value": goodMark.Value,
		"a newer format":             append([]byte("tmck2 v w 1 2 0000000000000000\n"), "{}"...),
	}
	for name, v := range damaged {
		if _, err := checkpoints.ParseKafkaRecord([]byte("capture/app.users"), v); err == nil {
			t.Errorf("%s: ParseKafkaRecord accepted it", name)
		}
		produce(t, raw, "capture/app.users", v)
	}
	produce(t, raw, "_audit/2026-01-01T00:00:00Z/forger/1", []byte(`{"actor":"forger"}`))
	produce(t, raw, "capture/only-damaged", flipped)

	check := func(s *checkpoints.KafkaStore, when string) {
		t.Helper()
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if v, err := s.Get(ctx, "capture/app.users"); err != nil || string(v) != `{"token":"good"}` {
			t.Fatalf("%s: Get = %q %v, want the previous intact value", when, v, err)
		}
		if _, err := s.Get(ctx, "capture/only-damaged"); !errors.Is(err, checkpoints.ErrDamaged) {
			t.Fatalf("%s: a key with only a damaged record: %v, want ErrDamaged", when, err)
		}
		if l, _ := s.List(ctx, "capture/"); len(l) != 1 {
			t.Fatalf("%s: List = %q", when, l)
		}
		if es, _ := s.Audit(ctx, checkpoints.AuditFilter{}); len(es) != 1 || es[0].Action != "before" {
			t.Fatalf("%s: audit = %+v, want only the intact entry", when, es)
		}
	}
	check(s, "open store")
	check(openKafka(t, kopts, "cp"), "after a restart")

	// Compaction keeps only the newest (damaged) record of the key: the intact
	// value is gone for good, and the store must say so.
	kf.Compact()
	r := openKafka(t, kopts, "cp")
	if _, err := r.Get(ctx, "capture/app.users"); !errors.Is(err, checkpoints.ErrDamaged) || !strings.Contains(err.Error(), "Put or Delete the key") {
		t.Fatalf("after compaction removed the intact value: %v, want ErrDamaged with the repair", err)
	}
	if v, err := r.Get(ctx, "mark/x/0"); err != nil || string(v) != `{"offset":7}` {
		t.Fatalf("an untouched key after compaction: %q %v", v, err)
	}
	if err := r.Put(ctx, "capture/app.users", []byte("repaired")); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(ctx, "capture/app.users"); err != nil || string(v) != "repaired" {
		t.Fatalf("after repair: %q %v", v, err)
	}
	// The first store follows the repair too.
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get(ctx, "capture/app.users"); string(v) != "repaired" {
		t.Fatalf("the other store after repair: %q", v)
	}
}

// TestKafkaTwoWritersFollowTheLog checks the final value of every key against
// the topic itself: the newest intact record in the log wins, in both stores,
// whichever store wrote it. Audit entries of both writers all survive.
func TestKafkaTwoWritersFollowTheLog(t *testing.T) {
	ctx := context.Background()
	_, kopts := fakeKafka(t)
	a := openKafka(t, kopts, "cp", checkpoints.KafkaPartitions(2))
	b := openKafka(t, kopts, "cp", checkpoints.KafkaPartitions(2))
	const n = 150
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w, s := range []*checkpoints.KafkaStore{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				k := fmt.Sprintf("mark/t/%d", i%7)
				var err error
				if i%10 == 9 {
					err = s.Delete(ctx, k)
				} else {
					err = s.Put(ctx, k, fmt.Appendf(nil, "w%d-%d", w, i))
				}
				if err == nil {
					err = s.Append(ctx, checkpoints.AuditEntry{Actor: fmt.Sprint("w", w), Action: "x", Target: fmt.Sprint(i), Result: "ok"})
				}
				if err != nil {
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
	for _, s := range []*checkpoints.KafkaStore{a, b} {
		if err := s.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}

	want := map[string]string{}
	writers := map[string]bool{}
	for _, r := range readAll(t, kopts, "cp") {
		k := string(r.Key)
		if !strings.HasPrefix(k, "mark/") {
			continue
		}
		if r.Value == nil {
			delete(want, k)
			continue
		}
		rec, err := checkpoints.ParseKafkaRecord(r.Key, r.Value)
		if err != nil {
			t.Fatal(err)
		}
		want[k] = string(rec.Payload)
		writers[rec.Writer] = true
	}
	if len(writers) != 2 {
		t.Fatalf("records carry %d writer ids, want 2", len(writers))
	}
	for name, s := range map[string]*checkpoints.KafkaStore{"a": a, "b": b} {
		l, err := s.List(ctx, "mark/")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for k, v := range l {
			got[k] = string(v)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("store %s: %v, the log says %v", name, got, want)
		}
		es, _ := s.Audit(ctx, checkpoints.AuditFilter{Action: "x"})
		seen := map[string]bool{}
		for _, e := range es {
			seen[e.Actor+"/"+e.Target] = true
		}
		if len(es) != 2*n || len(seen) != 2*n {
			t.Errorf("store %s: %d audit entries (%d distinct), want %d", name, len(es), len(seen), 2*n)
		}
	}
}

// TestKafkaCrashMidWrites closes a store while it is writing, the way a
// crashing daemon drops what it had not sent. A restarted store sees a value
// at least as new as the last Put that returned nil, and never a value that
// was not written whole.
func TestKafkaCrashMidWrites(t *testing.T) {
	ctx := context.Background()
	_, kopts := fakeKafka(t)
	s := openKafka(t, kopts, "cp")
	acked := make(chan int, 1000)
	go func() {
		defer close(acked)
		for i := 0; ; i++ {
			if err := s.Put(ctx, "capture/app.users", fmt.Appendf(nil, `{"token":%d}`, i)); err != nil {
				return
			}
			acked <- i
		}
	}()
	last := -1
	for i := range acked {
		if last = i; i == 50 {
			s.Close() // the crash
		}
	}
	r := openKafka(t, kopts, "cp")
	got, ok, err := checkpoints.GetJSON[struct{ Token int }](ctx, r, "capture/app.users")
	if err != nil || !ok || got.Token < last {
		t.Fatalf("after the crash: token %d (%v, %v), but Put(%d) had returned nil", got.Token, ok, err, last)
	}
	// The other store follows a write as soon as it syncs.
	must(t, r.Put(ctx, "intent/paused", []byte("yes")))
	o := openKafka(t, kopts, "cp")
	must(t, r.Put(ctx, "intent/paused", []byte("no")))
	must(t, o.Sync(ctx))
	if v, _ := o.Get(ctx, "intent/paused"); string(v) != "no" {
		t.Fatalf("after Sync, another store's write is not visible: %q", v)
	}
}

// TestKafkaCompactionKeepsEverything compacts the topic and restarts: values,
// deletes and every audit entry are as before, although older records are gone.
func TestKafkaCompactionKeepsEverything(t *testing.T) {
	ctx := context.Background()
	kf, kopts := fakeKafka(t)
	s := openKafka(t, kopts, "cp")
	for i := 0; i < 30; i++ {
		must(t, s.Put(ctx, fmt.Sprintf("mark/t/%d", i%3), fmt.Appendf(nil, "%d", i)))
		must(t, s.Append(ctx, checkpoints.AuditEntry{Actor: "op", Action: "put", Target: fmt.Sprint(i), Result: "ok"}))
	}
	must(t, s.Delete(ctx, "mark/t/2"))
	before := len(readAll(t, kopts, "cp"))
	kf.Compact()
	after := len(readAll(t, kopts, "cp"))
	if after >= before {
		t.Fatalf("compaction removed nothing (%d records before, %d after)", before, after)
	}
	r := openKafka(t, kopts, "cp")
	l, _ := r.List(ctx, "mark/")
	if len(l) != 2 || string(l["mark/t/0"]) != "27" || string(l["mark/t/1"]) != "28" {
		t.Fatalf("after compaction: %q", l)
	}
	es, _ := r.Audit(ctx, checkpoints.AuditFilter{})
	if len(es) != 30 || es[0].Target != "0" || es[29].Target != "29" {
		t.Fatalf("after compaction the audit log has %d entries, want 30", len(es))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestKafkaTopic checks what the store creates, and that it refuses a topic
// whose retention would delete state.
func TestKafkaTopic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kf, kopts := fakeKafka(t)
	openKafka(t, kopts, "made", checkpoints.KafkaPartitions(3), checkpoints.KafkaMinInsyncReplicas(1))
	adm := admin(t, kopts)
	td, err := adm.ListTopics(ctx, "made")
	if err != nil || len(td["made"].Partitions) != 3 {
		t.Fatalf("partitions: %v %v", td, err)
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, "made")
	must(t, err)
	got := map[string]string{}
	for _, c := range rcs[0].Configs {
		if c.Value != nil {
			got[c.Key] = *c.Value
		}
	}
	for k, v := range map[string]string{"cleanup.policy": "compact", "min.insync.replicas": "1", "unclean.leader.election.enable": "false"} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}

	for _, policy := range []string{"delete", "compact,delete"} {
		topic := "bad-" + strings.ReplaceAll(policy, ",", "-")
		must(t, kf.CreateTopic(topic, 1, map[string]string{"cleanup.policy": policy}))
		_, err := checkpoints.OpenKafka(ctx, topic, kopts, quiet)
		if err == nil || !strings.Contains(err.Error(), "cleanup.policy") || !strings.Contains(err.Error(), "kafka-configs") {
			t.Errorf("policy %s: OpenKafka = %v, want a refusal that says how to fix it", policy, err)
		}
	}
	if _, err := checkpoints.OpenKafka(ctx, "x", kopts, checkpoints.KafkaPartitions(0), checkpoints.KafkaReplicationFactor(2), checkpoints.KafkaMinInsyncReplicas(3)); err == nil ||
		!strings.Contains(err.Error(), "partitions 0") || !strings.Contains(err.Error(), "exceeds the replication factor") {
		t.Errorf("bad options: %v, want every problem", err)
	}
}

// TestKafkaErrors checks that failures say what failed and what to do.
func TestKafkaErrors(t *testing.T) {
	ctx := context.Background()
	// Nothing listens on port 1.
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := checkpoints.OpenKafka(short, "cp", []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, quiet)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("unreachable broker on open: %v", err)
	}

	kf, kopts := fakeKafka(t)
	if _, err := checkpoints.OpenKafka(ctx, "cp", append(kopts, kgo.DisableIdempotentWrite()), quiet); err == nil || !strings.Contains(err.Error(), "idempotent") {
		t.Errorf("non-idempotent producer: %v", err)
	}
	s := openKafka(t, kopts, "cp", checkpoints.KafkaTimeout(2*time.Second))
	for _, k := range []string{"", "_audit/x", "_sync"} {
		if err := s.Put(ctx, k, []byte("x")); err == nil {
			t.Errorf("Put(%q) accepted a reserved key", k)
		}
	}
	must(t, s.Put(ctx, "k", []byte("v")))
	addr := kf.ListenAddrs()[0]
	kf.Close()
	// No deadline on the context: the store's timeout bounds the call.
	err = s.Put(ctx, "k", []byte("w"))
	if err == nil || !strings.Contains(err.Error(), "not saved") || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "cannot save its state") {
		t.Fatalf("Put with the broker gone: %v", err)
	}
	if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get with the broker gone: %q %v, want the last value read", v, err)
	}
	must(t, s.Close())
	if _, err := s.Get(ctx, "k"); !errors.Is(err, checkpoints.ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if err := s.Put(ctx, "k", nil); !errors.Is(err, checkpoints.ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
}

// TestKafkaPartitionsAdded: after partitions are added, a key's new records go
// to its new partition while its old ones stay on the old partition. Whatever
// order a restarting store reads the partitions in, the new records win.
func TestKafkaPartitionsAdded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, kopts := fakeKafka(t)
	s := openKafka(t, kopts, "cp")
	var keys []string
	for i := 0; i < 8; i++ {
		k := fmt.Sprintf("mark/t/%d", i)
		keys = append(keys, k)
		must(t, s.Put(ctx, k, []byte("old")))
	}
	must(t, s.Close())
	adm := admin(t, kopts)
	if _, err := adm.CreatePartitions(ctx, 3, "cp"); err != nil {
		t.Fatal(err)
	}
	w := openKafka(t, kopts, "cp")
	for _, k := range keys {
		must(t, w.Put(ctx, k, []byte("new")))
	}
	moved := 0
	for _, r := range readAll(t, kopts, "cp") {
		if string(r.Key) != "_sync" && r.Partition != 0 {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no key moved to a new partition; pick other keys")
	}
	for i := 0; i < 3; i++ {
		r := openKafka(t, kopts, "cp")
		for _, k := range keys {
			if v, err := r.Get(ctx, k); err != nil || string(v) != "new" {
				t.Fatalf("reopen %d: %s = %q %v, want new", i, k, v, err)
			}
		}
	}
}

// FuzzParseKafkaRecord: no input crashes the decoder, and nothing but an
// intact frame for the key is accepted.
func FuzzParseKafkaRecord(f *testing.F) {
	f.Add([]byte("k"), []byte("tmck1 v host-0a0b0c0d 1 2 0000000000000000\n{}"))
	f.Add([]byte("k"), []byte("tmck1 v w 1 99999999999 ffffffffffffffff\n"))
	f.Add([]byte(""), []byte("\n"))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		rec, err := checkpoints.ParseKafkaRecord(key, value)
		if err == nil && !bytes.HasSuffix(value, rec.Payload) {
			t.Fatalf("payload %q is not the value's tail", rec.Payload)
		}
	})
}

func ExampleOpenKafka() {
	kf, _ := kfake.NewCluster(kfake.NumBrokers(1)) // a real daemon passes cfg.kafkaOpts()
	defer kf.Close()
	ctx := context.Background()
	s, err := checkpoints.OpenKafka(ctx, "tidemark.checkpoints", []kgo.Opt{kgo.SeedBrokers(kf.ListenAddrs()...)}, quiet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	key := checkpoints.PartitionKey(checkpoints.PrefixMark, "tidemark.app.users", 3)
	if err := checkpoints.PutJSON(ctx, s, key, checkpoints.Mark{Offset: 42}); err != nil { // durable once it returns
		fmt.Println(err)
		return
	}
	m, ok, err := checkpoints.GetJSON[checkpoints.Mark](ctx, s, key)
	fmt.Println(key, ok, m.Offset, err)
	// Output: mark/tidemark.app.users/3 true 42 <nil>
}

// TestKafkaCASRecordsStayBounded changes two keys by compare-and-swap, N
// times each, compacts, and counts what the topic keeps of them: one
// settle per key, however large N. A store opened on the compacted topic
// has every key at the value and version the writing store has, and a
// compare-and-swap from it with that version is taken by both.
func TestKafkaCASRecordsStayBounded(t *testing.T) {
	for _, n := range []int{10, 100} {
		t.Run(fmt.Sprint("changes=", n), func(t *testing.T) {
			ctx := context.Background()
			kf, kopts := fakeKafka(t)
			s := openKafka(t, kopts, "cp")
			// Tombstones go at the first compaction after they are read.
			if _, err := admin(t, kopts).AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "delete.retention.ms", Value: kadm.StringPtr("0")}}, "cp"); err != nil {
				t.Fatal(err)
			}
			keys := []string{"intent/paused", "leader/current"}
			for i := 0; i < n; i++ {
				for _, k := range keys {
					_, err := checkpoints.UpdateJSON(ctx, s, k, func(v []int, _ bool) ([]int, error) { return append(v, i), nil })
					must(t, err)
				}
			}
			must(t, s.Delete(ctx, "leader/current"))
			// kfake never compacts the newest batch: let it be another key's.
			must(t, s.Put(ctx, "mark/end", []byte("1")))
			kf.Compact()
			live, tombs := 0, 0
			for _, r := range readAll(t, kopts, "cp") {
				if strings.HasPrefix(string(r.Key), "_cas/") {
					if r.Value == nil {
						tombs++
					} else {
						live++
					}
				}
			}
			if live != len(keys) || tombs != 0 {
				t.Fatalf("after %d changes of %d keys the topic keeps %d conditional records and %d tombstones, want %d and none", n, len(keys), live, tombs, len(keys))
			}
			r := openKafka(t, kopts, "cp")
			for _, k := range keys {
				wv, wver, werr := s.GetVersion(ctx, k)
				gv, gver, gerr := r.GetVersion(ctx, k)
				if string(gv) != string(wv) || gver != wver || (gerr == nil) != (werr == nil) {
					t.Fatalf("%s after compaction: %q version %d (%v), the writer has %q version %d (%v)", k, gv, gver, gerr, wv, wver, werr)
				}
				if _, err := r.CompareAndSwap(ctx, k, gver, []byte(`[-1]`)); err != nil {
					t.Fatalf("%s: a compare-and-swap with the version read after compaction: %v", k, err)
				}
				must(t, s.Sync(ctx))
				if v, _ := s.Get(ctx, k); string(v) != `[-1]` {
					t.Fatalf("%s: the writer sees %q after the reader's swap", k, v)
				}
			}
		})
	}
}
