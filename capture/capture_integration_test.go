//go:build integration

package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// childEnv carries the child's configuration when the test binary re-executes
// itself as a capture process that the parent can SIGKILL.
const childEnv = "TIDEMARK_CAPTURE_CHILD"

type childConfig struct {
	Namespace string `json:"namespace"`
	Prefix    string `json:"prefix"`
	StoreDir  string `json:"store_dir"`
	// ChunkSize and RateLimit of the backfill; 0 keeps 2000 and unlimited.
	ChunkSize int     `json:"chunk_size,omitempty"`
	RateLimit float64 `json:"rate_limit,omitempty"`
}

func TestMain(m *testing.M) { testbed.ChildMain(m, childEnv, runChild) }

func runChild(conf string) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(conf), &cc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	mc, err := mongo.Connect(ctx, options.Client().ApplyURI(testbed.MongoURI()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	store, err := checkpoints.OpenFile(cc.StoreDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if cc.ChunkSize == 0 {
		cc.ChunkSize = 2000
	}
	c, err := New(Config{TopicPrefix: cc.Prefix, Namespaces: []string{cc.Namespace}, Partitions: 4,
		BatchSize: 500, Backfill: BackfillConfig{ChunkSize: cc.ChunkSize, RateLimit: cc.RateLimit}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := c.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func startChild(t *testing.T, cc childConfig) *exec.Cmd {
	t.Helper()
	b, _ := json.Marshal(cc)
	return testbed.StartChild(t, childEnv, string(b))
}

// TestIntegrationCaptureSurvivesKills: a backfill of pre-existing documents
// and a live stream of inserts, updates and deletes, with capture SIGKILLed at
// random moments three times. Afterwards the newest record of every _id in
// Kafka is the source's current document, or a delete for a deleted one.
func TestIntegrationCaptureSurvivesKills(t *testing.T) {
	const existing, changes = 50_000, 10_000
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "capture")
	coll := mc.Database(dbName).Collection("users")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	batch := make([]any, 0, 1000)
	for i := 0; i < existing; i++ {
		batch = append(batch, bson.D{{Key: "_id", Value: int64(i)}, {Key: "v", Value: 0}, {Key: "name", Value: fmt.Sprintf("user-%d", i)}})
		if len(batch) == cap(batch) {
			if _, err := coll.InsertMany(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	prefix := testbed.UniqueName(t, "cap")
	cc := childConfig{Namespace: dbName + ".users", Prefix: prefix, StoreDir: t.TempDir()}
	child := startChild(t, cc)

	// The workload runs while capture is killed and restarted.
	var applied atomic.Int64
	workDone := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < changes; i++ {
			id := int64(rng.IntN(existing + 2000))
			var err error
			switch rng.IntN(4) {
			case 0:
				_, err = coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
			case 1:
				_, err = coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "v", Value: i}, {Key: "replaced", Value: true}}, options.Replace().SetUpsert(true))
			default:
				_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: i}}}}, options.Update().SetUpsert(true))
			}
			if err != nil {
				workDone <- err
				return
			}
			applied.Add(1)
			if i%100 == 99 {
				time.Sleep(40 * time.Millisecond) // pace the workload so that kills land mid-stream
			}
		}
		workDone <- nil
	}()
	for k := 0; k < 3; k++ {
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond) // a random moment, not a wait for a condition
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		child.Wait()
		t.Logf("kill %d after %d changes", k+1, applied.Load())
		child = startChild(t, cc)
	}
	if err := <-workDone; err != nil {
		t.Fatal(err)
	}
	// A sentinel written last: once it is in Kafka, every earlier change is too.
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "sentinel"}}); err != nil {
		t.Fatal(err)
	}
	store, _ := checkpoints.OpenFile(cc.StoreDir)
	waitCtx, waitCancel := context.WithTimeout(ctx, 3*time.Minute)
	defer waitCancel()
	latest := readTopic(t, waitCtx, envelope.Topic(prefix, cc.Namespace), func(m map[string]envelope.Event) bool {
		_, ok := m[string(envelope.Key(rawOf(t, "sentinel")))]
		p, _, _ := BackfillProgress(ctx, store, cc.Namespace)
		return ok && p.Done
	})

	// Compare with the source.
	cur, err := coll.Find(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for cur.Next(ctx) {
		doc := cur.Current
		key := string(envelope.Key(doc.Lookup("_id")))
		live[key] = true
		e, ok := latest[key]
		if !ok || e.Op == envelope.OpDelete || !bytes.Equal(e.Doc, doc) {
			t.Fatalf("_id %v: newest record %s %v does not match the source %v", doc.Lookup("_id"), e.Op, e.Doc, doc)
		}
	}
	deleted := 0
	for key, e := range latest {
		if !live[key] {
			if e.Op != envelope.OpDelete {
				t.Fatalf("_id %x is gone from the source but its newest record is %s", key, e.Op)
			}
			deleted++
		}
	}
	if len(live)+deleted < existing || deleted == 0 {
		t.Fatalf("suspicious workload: %d live, %d deleted", len(live), deleted)
	}
	t.Logf("verified %d live documents and %d deletes", len(live), deleted)
}

func rawOf(t *testing.T, v any) bson.RawValue {
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: data}
}

// readTopic reads a topic (read_committed) until done holds and, from then,
// until every partition's end offset as of that moment, keeping for each key
// the event with the newest version; update events without a document carry
// no state and are skipped. Reading on to the end offsets makes sure a record
// acknowledged before done held (a backfill chunk on a partition the reader
// had not caught up with) is read too: stopping at done alone lost one in a
// run of TestIntegrationBackfillMixedIDTypes. Control records are kept only to
// see offsets move past a transaction's marker, the last offset of a
// partition written in transactions.
func readTopic(t *testing.T, ctx context.Context, topic string, done func(map[string]envelope.Event) bool) map[string]envelope.Event {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...), kgo.ConsumeTopics(topic), kgo.KeepControlRecords(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	latest := map[string]envelope.Event{}
	next := map[int32]int64{} // per partition, the offset after the last record read
	var ends map[int32]int64
	for {
		if ends == nil && done(latest) {
			ends = endOffsets(t, ctx, cl, topic)
		}
		if ends != nil && reached(next, ends) {
			return latest
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v (%d keys so far)", topic, ctx.Err(), len(latest))
		}
		fs.EachRecord(func(r *kgo.Record) {
			next[r.Partition] = max(next[r.Partition], r.Offset+1)
			if r.Attrs.IsControl() {
				return
			}
			e, err := envelope.Decode(r.Value)
			if err != nil {
				t.Fatalf("undecodable record at %d/%d: %v", r.Partition, r.Offset, err)
			}
			if !bytes.Equal(r.Key, e.Key()) {
				t.Fatalf("record key does not match its _id")
			}
			if e.Op == envelope.OpUpdate && e.Doc == nil {
				return
			}
			e.Doc = append(bson.Raw(nil), e.Doc...)
			if old, ok := latest[string(r.Key)]; !ok || !e.Version.Before(old.Version) {
				latest[string(r.Key)] = e
			}
		})
	}
}

// endOffsets is every partition's end offset now, retried while any
// partition errs (a listing that left one out would end a read early).
func endOffsets(t *testing.T, ctx context.Context, cl *kgo.Client, topic string) map[int32]int64 {
	t.Helper()
	for {
		listed, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
		if err == nil {
			err = listed.Error()
		}
		if err == nil {
			ends := map[int32]int64{}
			listed.Each(func(o kadm.ListedOffset) { ends[o.Partition] = o.Offset })
			return ends
		}
		select {
		case <-ctx.Done():
			t.Fatalf("end offsets of %s: %v", topic, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// reached reports whether next is at or past every end offset.
func reached(next, ends map[int32]int64) bool {
	for p, end := range ends {
		if next[p] < end {
			return false
		}
	}
	return true
}

// TestIntegrationHistoryLost truncates the stand-in's oplog past capture's
// checkpoint, as an oplog rollover would, and expects capture to stop with
// the history-lost error and metric rather than restart from now.
func TestIntegrationHistoryLost(t *testing.T) {
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "lost")
	coll := mc.Database(dbName).Collection("c")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store, _ := checkpoints.OpenFile(t.TempDir())
	ns := dbName + ".c"
	// A checkpoint from long ago, as left by a capture that was stopped for days.
	old := streamState{Token: []byte{0x05, 0, 0, 0, 0}, T: 1_000_000, I: 1, Time: time.Unix(1_000_000, 0)}
	tok, _ := bson.Marshal(bson.D{{Key: "_data", Value: "000f424000000001"}})
	old.Token = tok
	checkpoints.PutJSON(ctx, store, streamKey(ns), old)
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := New(Config{TopicPrefix: testbed.UniqueName(t, "lost"), Namespaces: []string{ns}, Partitions: 1,
		Backfill: BackfillConfig{Enabled: new(bool)}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.Default(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.stream(ctx, ns)
	var hl *HistoryLostError
	if !errors.As(err, &hl) || !errors.Is(err, ErrHistoryLost) {
		t.Fatalf("got %v, want a history-lost error", err)
	}
	if !strings.Contains(err.Error(), "tidemark backfill --namespace "+ns) {
		t.Fatalf("error does not name the recovery: %v", err)
	}
	// Run must stop the namespace and raise the metric.
	runCtx, stop := context.WithCancel(ctx)
	go c.Run(runCtx)
	defer stop()
	deadline := time.Now().Add(30 * time.Second)
	for testutil.ToFloat64(c.m.historyLost.WithLabelValues(ns)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("history-lost metric not set")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _, _ := checkpoints.GetJSON[streamState](ctx, store, streamKey(ns)); st.T != old.T {
		t.Fatalf("checkpoint moved past the gap to %d.%d", st.T, st.I)
	}
}

// TestIntegrationSecondWriterFencesFirst starts two capture processes for the
// same stream. The second one's transactional producer fences the first,
// which stops with ErrFenced, while the second carries the stream on.
func TestIntegrationSecondWriterFencesFirst(t *testing.T) {
	testbed.Kafka(t)
	mc := testbed.Mongo(t)
	dbName := testbed.UniqueName(t, "fence")
	coll := mc.Database(dbName).Collection("c")
	t.Cleanup(func() { mc.Database(dbName).Drop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := dbName + ".c"
	prefix := testbed.UniqueName(t, "fence")
	newCapture := func() (*Capture, checkpoints.Store) {
		store, _ := checkpoints.OpenFile(t.TempDir())
		c, err := New(Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 1, Backfill: BackfillConfig{Enabled: new(bool)}}, Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Store: store, Logger: slog.Default()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c, store
	}
	first, firstStore := newCapture()
	if err := first.ensureTopics(ctx); err != nil {
		t.Fatal(err)
	}
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.runNamespace(ctx, ns) }()
	insert := func(id int) {
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(id int) {
		readTopic(t, ctx, envelope.Topic(prefix, ns), func(m map[string]envelope.Event) bool {
			_, ok := m[string(envelope.Key(rawOf(t, int32(id))))]
			return ok
		})
	}
	// The first process opens its stream asynchronously; keep inserting until
	// one of its transactions is visible, so that the test does not depend on
	// which of the two happens first.
	adm := testbed.KafkaAdmin(t)
	id := 1
	for committed := false; !committed; id++ {
		insert(id)
		select {
		case <-ctx.Done():
			t.Fatal("first capture never produced")
		case <-time.After(200 * time.Millisecond):
		}
		ends, err := adm.ListEndOffsets(ctx, envelope.Topic(prefix, ns))
		if err != nil {
			t.Fatal(err)
		}
		ends.Each(func(o kadm.ListedOffset) { committed = committed || o.Offset > 0 })
	}
	second, _ := newCapture()
	secondCtx, stopSecond := context.WithCancel(ctx)
	defer stopSecond()
	go second.runNamespace(secondCtx, ns)
	// Keep writing until the first process is fenced: it fails on its first
	// transaction after the second one registered the same transactional id.
	for fenced := false; !fenced; id++ {
		insert(id)
		select {
		case err := <-firstDone:
			if !errors.Is(err, ErrFenced) {
				t.Fatalf("first capture stopped with %v, want ErrFenced", err)
			}
			fenced = true
		case <-ctx.Done():
			t.Fatal("first capture was not fenced")
		case <-time.After(200 * time.Millisecond):
		}
	}
	insert(id)
	waitFor(id) // written by the second process alone
	if st, _, _ := checkpoints.GetJSON[streamState](ctx, firstStore, streamKey(ns)); st.Token == nil {
		t.Fatal("first capture never checkpointed")
	}
}
