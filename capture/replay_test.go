package capture

// Replays of real-shaped change-stream sequences through capture's seam
// (changeStream / source). The events are shaped like a MongoDB 6.0+ replica
// set's (manual: "Change Events"): _id is the resume token {_data: hex
// KeyString starting with the cluster time}, clusterTime a Timestamp, ns,
// documentKey, fullDocument (updateLookup), updateDescription, and lsid +
// txnNumber on the events of a multi-document transaction, which all share
// the commit's clusterTime. Each case asserts what reaches Kafka (kfake,
// read_committed) and what a last-write-wins table with Cassandra's rules
// (higher timestamp wins; on a tie a delete wins, then the greater value)
// ends up holding.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
)

const (
	rdb   = "shop"
	rcoll = "orders"
	rns   = rdb + "." + rcoll
)

var errScriptDone = errors.New("replay: script exhausted")

// step is one server reply: a batch of events with its post-batch resume
// token (nil: the driver keeps the last event's _id), or an error.
type step struct {
	events []bson.Raw
	pbrt   bson.Raw
	err    error
}

// replayStream plays steps the way *mongo.ChangeStream's TryNext does.
type replayStream struct {
	steps []step
	batch []bson.Raw
	pos   int
	pbrt  bson.Raw
	tok   bson.Raw
	err   error
}

func (r *replayStream) TryNext(ctx context.Context) bool {
	if r.err != nil {
		return false
	}
	if r.pos+1 < len(r.batch) {
		r.pos++
		r.setToken()
		return true
	}
	if len(r.steps) == 0 {
		r.err = errScriptDone
		return false
	}
	s := r.steps[0]
	r.steps = r.steps[1:]
	if s.err != nil {
		r.err = s.err
		return false
	}
	r.batch, r.pos, r.pbrt = s.events, 0, s.pbrt
	if len(s.events) == 0 {
		if s.pbrt != nil {
			r.tok = s.pbrt
		}
		return false
	}
	r.setToken()
	return true
}

func (r *replayStream) setToken() {
	r.tok = r.batch[r.pos].Lookup("_id").Document()
	if r.pos == len(r.batch)-1 && r.pbrt != nil {
		r.tok = r.pbrt
	}
}

func (r *replayStream) Current() bson.Raw           { return r.batch[r.pos] }
func (r *replayStream) ResumeToken() bson.Raw       { return r.tok }
func (r *replayStream) RemainingBatchLength() int   { return len(r.batch) - r.pos - 1 }
func (r *replayStream) Err() error                  { return r.err }
func (r *replayStream) Close(context.Context) error { return nil }

// replaySource hands out one scripted stream per watch call and serves
// lookups from docs (the collection's current state).
type replaySource struct {
	mu      sync.Mutex
	streams [][]step
	opened  []watchOptions
	docs    map[string]bson.Raw
	typ     string
	t0      envelope.Version
}

func (s *replaySource) watch(_ context.Context, _ string, o watchOptions) (changeStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opened = append(s.opened, o)
	if len(s.streams) == 0 {
		return &replayStream{err: errScriptDone}, nil
	}
	st := s.streams[0]
	s.streams = s.streams[1:]
	return &replayStream{steps: st}, nil
}

func (s *replaySource) watches() []watchOptions {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]watchOptions(nil), s.opened...)
}

func (s *replaySource) lookup(_ context.Context, _ string, ids []bson.RawValue) (map[string]bson.Raw, error) {
	out := map[string]bson.Raw{}
	for _, id := range ids {
		if d, ok := s.docs[string(envelope.Key(id))]; ok {
			out[string(envelope.Key(id))] = d
		}
	}
	return out, nil
}

func (s *replaySource) oplogIDs(context.Context, string, []primitive.Timestamp) (map[primitive.Timestamp]bson.RawValue, error) {
	return nil, errors.New("replay: real servers always send documentKey._id")
}
func (s *replaySource) oldestHistory(context.Context) (envelope.Version, bool, error) {
	return envelope.Version{}, false, errors.New("replay: no oplog access (as through mongos)")
}
func (s *replaySource) newestHistory(context.Context) (envelope.Version, bool, error) {
	return envelope.Version{}, false, errors.New("replay: no oplog access (as through mongos)")
}
func (s *replaySource) startTime(context.Context, string) (envelope.Version, error) { return s.t0, nil }
func (s *replaySource) info(context.Context) (serverInfo, error) {
	return serverInfo{Major: 6, Minor: 0, Sessions: true}, nil
}
func (s *replaySource) collectionType(context.Context, string) (string, bool, error) {
	if s.typ == "" {
		return "", false, nil
	}
	return s.typ, true, nil
}

// Event builders. seq makes each token unique within one cluster time, as a
// transaction's txnOpIndex does.
func token(t, i uint32, seq int) bson.Raw {
	b, _ := bson.Marshal(bson.D{{Key: "_data", Value: fmt.Sprintf("82%08X%08X2B022C0100296E5A1004%04X", t, i, seq)}})
	return b
}

var txnLSID = bson.D{{Key: "id", Value: primitive.Binary{Subtype: 4, Data: bytes.Repeat([]byte{0xab}, 16)}},
	{Key: "uid", Value: primitive.Binary{Subtype: 0, Data: bytes.Repeat([]byte{0x11}, 32)}}}

type ev struct {
	op      string
	t, i    uint32
	seq     int
	id      any
	docKey  bson.D // default {_id: id}
	doc     bson.D // fullDocument
	txn     int64  // 0: not in a transaction
	to      string // rename target
	updDesc bool
}

func (e ev) raw() bson.Raw {
	d := bson.D{{Key: "_id", Value: token(e.t, e.i, e.seq)}, {Key: "operationType", Value: e.op},
		{Key: "clusterTime", Value: primitive.Timestamp{T: e.t, I: e.i}},
		{Key: "wallTime", Value: primitive.NewDateTimeFromTime(time.Unix(int64(e.t), 0))}}
	if e.op != "invalidate" {
		d = append(d, bson.E{Key: "ns", Value: bson.D{{Key: "db", Value: rdb}, {Key: "coll", Value: rcoll}}})
	}
	if e.to != "" {
		db, coll, _ := strings.Cut(e.to, ".")
		d = append(d, bson.E{Key: "to", Value: bson.D{{Key: "db", Value: db}, {Key: "coll", Value: coll}}})
	}
	if e.id != nil {
		dk := e.docKey
		if dk == nil {
			dk = bson.D{{Key: "_id", Value: e.id}}
		}
		d = append(d, bson.E{Key: "documentKey", Value: dk})
	}
	if e.doc != nil {
		d = append(d, bson.E{Key: "fullDocument", Value: e.doc})
	}
	if e.updDesc {
		d = append(d, bson.E{Key: "updateDescription", Value: bson.D{{Key: "updatedFields", Value: bson.D{{Key: "n", Value: 1}}},
			{Key: "removedFields", Value: bson.A{}}, {Key: "truncatedArrays", Value: bson.A{}}}})
	}
	if e.txn != 0 {
		d = append(d, bson.E{Key: "lsid", Value: txnLSID}, bson.E{Key: "txnNumber", Value: e.txn})
	}
	b, err := bson.Marshal(d)
	if err != nil {
		panic(err)
	}
	return b
}

func batch(pbrt bson.Raw, evs ...ev) step {
	s := step{pbrt: pbrt}
	for _, e := range evs {
		s.events = append(s.events, e.raw())
	}
	return s
}

func doc(id any, kv ...any) bson.D {
	d := bson.D{{Key: "_id", Value: id}}
	for i := 0; i+1 < len(kv); i += 2 {
		d = append(d, bson.E{Key: kv[i].(string), Value: kv[i+1]})
	}
	return d
}

func cmdErr(code int32, name string) error {
	return mongo.CommandError{Code: code, Name: name, Message: name}
}

// replayRig is capture wired to a replay source and an in-process Kafka.
type replayRig struct {
	kc    *kfake.Cluster
	c     *Capture
	src   *replaySource
	store *checkpointstest.Memory
	kafka []string
}

func newReplayRig(t *testing.T, src *replaySource, cfg Config) *replayRig {
	t.Helper()
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	cfg.Namespaces, cfg.Partitions, cfg.TopicPrefix = []string{rns}, 3, "rp"
	cfg.IdlePoll, cfg.IdleCheckpointInterval = time.Millisecond, time.Nanosecond
	if cfg.Backfill.Enabled == nil {
		cfg.Backfill.Enabled = new(bool)
	}
	store := checkpointstest.New()
	c, err := New(cfg, Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(kc.ListenAddrs()...)}, Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.src = src
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.ensureTopics(ctx); err != nil {
		t.Fatal(err)
	}
	return &replayRig{kc: kc, c: c, src: src, store: store, kafka: kc.ListenAddrs()}
}

func (r *replayRig) state(t *testing.T) streamState {
	st, _, err := checkpoints.GetJSON[streamState](context.Background(), r.store, streamKey(rns))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// consumed is every committed record of a topic. It reads uncommitted with
// the control records and applies the markers itself: a transaction's
// records count once its commit marker is seen, and are dropped at an abort
// marker. Markers are written after EndTxn returns (in Kafka as in kfake), so
// it reads until every partition's end offset was reached and no
// transaction's outcome is pending.
func consumed(t *testing.T, brokers []string, topic string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.KeepControlRecords(),
		kgo.FetchIsolationLevel(kgo.ReadUncommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Every partition's end offset, retried while any partition errs (a
	// listing that skipped one would end the read early).
	var ends kadm.ListedOffsets
	for {
		ends, err = kadm.NewClient(cl).ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("end offsets of %s: %v", topic, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	need := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			need[o.Partition] = o.Offset - 1
		}
	})
	type txnKey struct {
		p   int32
		pid int64
	}
	open := map[txnKey][]*kgo.Record{}
	var out []*kgo.Record
	for len(need) > 0 || len(open) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: still waiting for partitions %v and %d open transactions", topic, need, len(open))
		}
		fs.EachRecord(func(r *kgo.Record) {
			if o, ok := need[r.Partition]; ok && r.Offset >= o {
				delete(need, r.Partition)
			}
			k := txnKey{r.Partition, r.ProducerID}
			switch {
			case r.Attrs.IsControl():
				// Control record key: version int16, type int16 (0 abort, 1 commit).
				if len(r.Key) >= 4 && r.Key[3] == 1 {
					out = append(out, open[k]...)
				}
				delete(open, k)
			case r.Attrs.IsTransactional():
				open[k] = append(open[k], r)
			default:
				out = append(out, r)
			}
		})
	}
	return out
}

// events decodes the committed records of the namespace's topic.
func events(t *testing.T, r *replayRig) []envelope.Event {
	t.Helper()
	var out []envelope.Event
	for _, rec := range consumed(t, r.kafka, envelope.Topic("rp", rns)) {
		e, err := envelope.Decode(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rec.Key, e.Key()) {
			t.Fatalf("record key %x is not its _id's key %x", rec.Key, e.Key())
		}
		e.Doc = append(bson.Raw(nil), e.Doc...)
		out = append(out, e)
	}
	return out
}

// cell is one row of a last-write-wins table with Cassandra's rules.
type cell struct {
	v       envelope.Version
	deleted bool
	doc     bson.Raw
}

// applyLWW applies records in any order, as the sink's USING TIMESTAMP does:
// the higher version wins; on equal versions Cassandra lets a tombstone win
// and between two writes the greater value, whatever the order. Update
// records without a document change nothing.
func applyLWW(evs []envelope.Event) map[string]cell {
	tab := map[string]cell{}
	for _, e := range evs {
		if e.Op == envelope.OpUpdate && e.Doc == nil {
			continue
		}
		k := string(e.Key())
		n := cell{v: e.Version, deleted: e.Op == envelope.OpDelete, doc: e.Doc}
		old, ok := tab[k]
		switch {
		case !ok || old.v.Before(n.v):
			tab[k] = n
		case old.v == n.v && !old.deleted && (n.deleted || bytes.Compare(n.doc, old.doc) > 0):
			tab[k] = n
		}
	}
	return tab
}

func mustRaw(d bson.D) bson.Raw {
	b, err := bson.Marshal(d)
	if err != nil {
		panic(err)
	}
	return b
}

func keyOf(id any) string {
	t, v, err := bson.MarshalValue(id)
	if err != nil {
		panic(err)
	}
	return string(envelope.Key(bson.RawValue{Type: t, Value: v}))
}

// want is the expected final table: _id -> document (nil: deleted).
type want map[any]bson.D

func checkTable(t *testing.T, evs []envelope.Event, w want) {
	t.Helper()
	// Versions must be unique per document: two records of one _id at one
	// version would leave the outcome to Cassandra's tie-break.
	seen := map[string]bool{}
	for _, e := range evs {
		k := string(e.Key()) + e.Version.String()
		if seen[k] {
			t.Errorf("two records for _id %v at version %s", e.ID, e.Version)
		}
		seen[k] = true
	}
	tab := applyLWW(evs)
	if len(tab) != len(w) {
		t.Errorf("table holds %d keys, want %d", len(tab), len(w))
	}
	for id, d := range w {
		c, ok := tab[keyOf(id)]
		switch {
		case !ok:
			t.Errorf("_id %v: no row", id)
		case d == nil && !c.deleted:
			t.Errorf("_id %v: row %v, want deleted", id, c.doc)
		case d != nil && (c.deleted || !bytes.Equal(c.doc, mustRaw(d))):
			t.Errorf("_id %v: row %v (deleted %v), want %v", id, c.doc, c.deleted, mustRaw(d))
		}
	}
}

func TestReplayTransactionsAndShardKeyChanges(t *testing.T) {
	oid := primitive.ObjectID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	for _, tc := range []struct {
		name    string
		streams [][]step
		docs    want // lookup state (the collection now)
		want    want
		records int
	}{{
		name: "transaction writes one _id twice and another once",
		streams: [][]step{{batch(nil,
			ev{op: "insert", t: 100, i: 1, seq: 0, id: int64(1), doc: doc(int64(1), "n", 1), txn: 7},
			ev{op: "update", t: 100, i: 1, seq: 1, id: int64(1), doc: doc(int64(1), "n", 2), txn: 7, updDesc: true},
			ev{op: "insert", t: 100, i: 1, seq: 2, id: "b", doc: doc("b", "n", 1), txn: 7},
			ev{op: "update", t: 101, i: 1, id: "b", doc: doc("b", "n", 5), updDesc: true},
		)}},
		want:    want{int64(1): doc(int64(1), "n", 2), "b": doc("b", "n", 5)},
		records: 3,
	}, {
		name: "transaction inserts then deletes one documentKey",
		streams: [][]step{{batch(nil,
			ev{op: "insert", t: 100, i: 1, seq: 0, id: oid, doc: doc(oid, "n", 1), txn: 7},
			ev{op: "delete", t: 100, i: 1, seq: 1, id: oid, txn: 7},
		)}},
		want:    want{oid: nil},
		records: 1,
	}, {
		name: "delete then insert of one documentKey (replace by delete+insert)",
		streams: [][]step{{batch(nil,
			ev{op: "delete", t: 100, i: 3, seq: 0, id: "k", txn: 9},
			ev{op: "insert", t: 100, i: 3, seq: 1, id: "k", doc: doc("k", "v", 2), txn: 9},
		)}},
		want:    want{"k": doc("k", "v", 2)},
		records: 1,
	}, {
		name: "shard-key change: delete old key, then insert new key",
		streams: [][]step{{batch(nil,
			ev{op: "insert", t: 90, i: 1, id: int64(5), docKey: bson.D{{Key: "region", Value: "eu"}, {Key: "_id", Value: int64(5)}}, doc: doc(int64(5), "region", "eu")},
			ev{op: "delete", t: 100, i: 2, seq: 0, id: int64(5), docKey: bson.D{{Key: "region", Value: "eu"}, {Key: "_id", Value: int64(5)}}, txn: 3},
			ev{op: "insert", t: 100, i: 2, seq: 1, id: int64(5), docKey: bson.D{{Key: "region", Value: "us"}, {Key: "_id", Value: int64(5)}}, doc: doc(int64(5), "region", "us"), txn: 3},
		)}},
		want:    want{int64(5): doc(int64(5), "region", "us")},
		records: 2,
	}, {
		name: "shard-key change: insert new key, then delete old key",
		streams: [][]step{{batch(nil,
			ev{op: "insert", t: 90, i: 1, id: int64(5), docKey: bson.D{{Key: "region", Value: "eu"}, {Key: "_id", Value: int64(5)}}, doc: doc(int64(5), "region", "eu")},
			ev{op: "insert", t: 100, i: 2, seq: 0, id: int64(5), docKey: bson.D{{Key: "region", Value: "us"}, {Key: "_id", Value: int64(5)}}, doc: doc(int64(5), "region", "us"), txn: 3},
			ev{op: "delete", t: 100, i: 2, seq: 1, id: int64(5), docKey: bson.D{{Key: "region", Value: "eu"}, {Key: "_id", Value: int64(5)}}, txn: 3},
		)}},
		want:    want{int64(5): doc(int64(5), "region", "us")},
		records: 2,
	}, {
		name: "transaction cut across two server batches is produced whole",
		streams: [][]step{{
			// The first batch ends inside the transaction: its post-batch
			// token is the last event's own.
			batch(token(100, 1, 1),
				ev{op: "insert", t: 99, i: 4, id: "x", doc: doc("x", "n", 0)},
				ev{op: "insert", t: 100, i: 1, seq: 0, id: "a", doc: doc("a", "n", 1), txn: 4},
				ev{op: "update", t: 100, i: 1, seq: 1, id: "a", doc: doc("a", "n", 2), txn: 4}),
			batch(token(100, 9, 0),
				ev{op: "update", t: 100, i: 1, seq: 2, id: "a", doc: doc("a", "n", 3), txn: 4},
				ev{op: "delete", t: 100, i: 1, seq: 3, id: "x", txn: 4}),
		}},
		want:    want{"a": doc("a", "n", 3), "x": nil},
		records: 3,
	}, {
		name: "update without fullDocument is looked up (update_lookup capture)",
		streams: [][]step{{batch(nil,
			ev{op: "update", t: 100, i: 1, seq: 0, id: "u", txn: 2, updDesc: true},
			ev{op: "update", t: 100, i: 1, seq: 1, id: "u", txn: 2, updDesc: true},
		)}},
		docs:    want{"u": doc("u", "n", 9)},
		want:    want{"u": doc("u", "n", 9)},
		records: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			// After the last batch the server answers an empty getMore: a
			// batch ending on a transaction's event only shows that the
			// transaction is complete then (its post-batch token can equal the
			// last event's when the commit was the newest oplog entry).
			tc.streams[0] = append(tc.streams[0], step{})
			src := &replaySource{streams: tc.streams, docs: map[string]bson.Raw{}}
			for id, d := range tc.docs {
				src.docs[keyOf(id)] = mustRaw(d)
			}
			r := newReplayRig(t, src, Config{UpdateLookup: "capture"})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			putState(ctx, r.c, rns, streamState{StartT: 50})
			if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
				t.Fatalf("stream ended with %v", err)
			}
			evs := events(t, r)
			if len(evs) != tc.records {
				t.Errorf("%d records in Kafka, want %d: %+v", len(evs), tc.records, evs)
			}
			checkTable(t, evs, tc.want)
			if st, last := r.state(t), lastToken(tc.streams[0]); !bytes.Equal(st.Token, last) {
				t.Errorf("checkpoint %s, want %s", bson.Raw(st.Token), last)
			}
		})
	}
}

// lastToken is the resume token after every step: the newest post-batch
// token or, without one, the last event's _id.
func lastToken(steps []step) bson.Raw {
	var tok bson.Raw
	for _, s := range steps {
		if len(s.events) > 0 {
			tok = s.events[len(s.events)-1].Lookup("_id").Document()
		}
		if s.pbrt != nil {
			tok = s.pbrt
		}
	}
	return tok
}

// A connection lost while a transaction is only partly read must leave
// nothing of it in Kafka and the checkpoint before it; the reopened stream
// produces it whole.
func TestReplayInterruptedTransactionIsNotSplit(t *testing.T) {
	before := ev{op: "insert", t: 99, i: 4, id: "x", doc: doc("x", "n", 0)}
	part1 := []ev{{op: "insert", t: 100, i: 1, seq: 0, id: "a", doc: doc("a", "n", 1), txn: 4},
		{op: "update", t: 100, i: 1, seq: 1, id: "a", doc: doc("a", "n", 2), txn: 4}}
	part2 := ev{op: "delete", t: 100, i: 1, seq: 2, id: "x", txn: 4}
	network := mongo.CommandError{Code: 6, Name: "HostUnreachable", Labels: []string{"ResumableChangeStreamError"}}
	src := &replaySource{streams: [][]step{
		{batch(nil, before), batch(token(100, 1, 1), part1...), {err: network}},
		{batch(token(100, 8, 0), append(part1, part2)...)},
	}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); err == nil || errors.Is(err, errScriptDone) || !strings.Contains(err.Error(), "HostUnreachable") {
		t.Fatalf("first stream ended with %v", err)
	}
	evs := events(t, r)
	if len(evs) != 1 || evs[0].Version != (envelope.Version{T: 99, I: 4}) {
		t.Fatalf("after the interruption Kafka holds %+v, want only the event before the transaction", evs)
	}
	if st := r.state(t); !bytes.Equal(st.Token, before.raw().Lookup("_id").Document()) {
		t.Fatalf("checkpoint %s is not the event before the transaction", bson.Raw(st.Token))
	}
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("second stream ended with %v", err)
	}
	if w := src.watches(); len(w) != 2 || !bytes.Equal(w[1].ResumeAfter, before.raw().Lookup("_id").Document()) {
		t.Fatalf("reopened with %+v", w)
	}
	checkTable(t, events(t, r), want{"a": doc("a", "n", 2), "x": nil})
}

// An idle stream's empty batches carry newer post-batch resume tokens; the
// checkpoint follows them, so the resume point stays inside the oplog.
func TestReplayIdleStreamAdvancesCheckpoint(t *testing.T) {
	src := &replaySource{streams: [][]step{{
		batch(nil, ev{op: "insert", t: 100, i: 1, id: 1, doc: doc(1)}),
		{pbrt: token(160, 0, 0)}, {pbrt: token(220, 0, 0)}, {pbrt: token(280, 3, 0)},
	}}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("stream ended with %v", err)
	}
	st := r.state(t)
	if !bytes.Equal(st.Token, token(280, 3, 0)) || st.T != 280 || st.I != 3 {
		t.Fatalf("checkpoint %s at %d.%d, want the last post-batch token at 280.3", bson.Raw(st.Token), st.T, st.I)
	}
	if n := len(events(t, r)); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
	// The next stream resumes after the idle token.
	r.c.stream(ctx, rns)
	if w := src.watches(); !bytes.Equal(w[len(w)-1].ResumeAfter, token(280, 3, 0)) {
		t.Fatalf("reopened with %+v", w[len(w)-1])
	}
}

// Drop, rename and dropDatabase end the stream with invalidate. Capture
// stops the namespace with an error that names what happened, records the
// invalidate token, and never loops; a later start refuses at once.
func TestReplayInvalidateStopsNamespace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause ev
		want  []string
	}{
		{"drop", ev{op: "drop", t: 200, i: 1}, []string{"was dropped", "--reset-stream", "repair --report"}},
		{"rename", ev{op: "rename", t: 200, i: 1, to: "shop.orders_old"}, []string{"renamed to shop.orders_old", "capture.namespaces"}},
		{"dropDatabase", ev{op: "dropDatabase", t: 200, i: 1}, []string{"dropped with its database", "--reset-stream"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv := ev{op: "invalidate", t: 200, i: 1, seq: 1}
			src := &replaySource{streams: [][]step{{
				batch(nil, ev{op: "insert", t: 150, i: 1, id: "a", doc: doc("a")}, tc.cause, inv),
			}}}
			r := newReplayRig(t, src, Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			putState(ctx, r.c, rns, streamState{StartT: 50})
			err := r.c.runNamespace(ctx, rns) // must return, not loop
			var ie *InvalidatedError
			if !errors.As(err, &ie) || !errors.Is(err, ErrInvalidated) || ie.Op != tc.cause.op {
				t.Fatalf("got %v, want an invalidated error for %s", err, tc.cause.op)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if got := testutil.ToFloat64(r.c.m.invalidated.WithLabelValues(rns)); got != 1 {
				t.Errorf("invalidated metric %v", got)
			}
			st := r.state(t)
			if st.Invalidated == nil || !st.Invalidated.Invalidate || !bytes.Equal(st.Invalidated.Token, inv.raw().Lookup("_id").Document()) {
				t.Fatalf("checkpoint does not hold the invalidate token: %+v", st.Invalidated)
			}
			checkTable(t, events(t, r), want{"a": doc("a")})
			if err := r.c.runNamespace(ctx, rns); !errors.Is(err, ErrInvalidated) {
				t.Fatalf("restart: %v", err)
			}
			if n := len(src.watches()); n != 1 {
				t.Fatalf("%d streams opened, want 1 (no retry after invalidate)", n)
			}
		})
	}
}

// The stand-in sends a drop without an invalidate; capture stops at the drop.
func TestReplayDropWithoutInvalidate(t *testing.T) {
	src := &replaySource{streams: [][]step{{
		batch(nil, ev{op: "drop", t: 200, i: 1}),
		batch(nil, ev{op: "insert", t: 201, i: 1, id: "new", doc: doc("new")}),
	}}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, ErrInvalidated) {
		t.Fatalf("got %v", err)
	}
	if st := r.state(t); st.Invalidated == nil || st.Invalidated.Invalidate || st.Invalidated.Op != "drop" {
		t.Fatalf("invalidation %+v", st.Invalidated)
	}
}

// Server errors that no retry can fix stop the namespace with a named error.
func TestReplayFatalStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		err    error
		target error
		want   string
	}{
		{cmdErr(286, "ChangeStreamHistoryLost"), ErrHistoryLost, "--reset-stream"},
		{cmdErr(280, "ChangeStreamFatalError"), ErrHistoryLost, "--reset-stream"},
		{cmdErr(260, "InvalidResumeToken"), ErrUnresumable, "refuses to resume"},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			src := &replaySource{streams: [][]step{{batch(nil, ev{op: "insert", t: 150, i: 1, id: "a", doc: doc("a")}), {err: tc.err}}}}
			r := newReplayRig(t, src, Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			putState(ctx, r.c, rns, streamState{StartT: 50})
			err := r.c.runNamespace(ctx, rns)
			if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v naming %q", err, tc.target, tc.want)
			}
			if n := len(src.watches()); n != 1 {
				t.Fatalf("%d streams opened, want 1", n)
			}
			checkTable(t, events(t, r), want{"a": doc("a")})
			if st := r.state(t); st.T != 150 {
				t.Fatalf("checkpoint moved to %d.%d", st.T, st.I)
			}
		})
	}
}

// An event over 16 MB fails the getMore with 10334 on every retry. Capture
// finds its position with fullDocument projected away, dead-letters its _id
// and version, and goes on after it.
func TestReplayEventTooLargeIsDeadLettered(t *testing.T) {
	big := ev{op: "update", t: 300, i: 2, id: "huge", updDesc: true}
	src := &replaySource{streams: [][]step{
		{batch(nil, ev{op: "insert", t: 300, i: 1, id: "a", doc: doc("a")}), {err: cmdErr(10334, "BSONObjectTooLarge")}},
		{batch(nil, big)}, // the probe
		{batch(nil, ev{op: "insert", t: 300, i: 3, id: "b", doc: doc("b")})},
	}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, errSkipped) {
		t.Fatalf("first stream: %v", err)
	}
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("second stream: %v", err)
	}
	w := src.watches()
	aTok := ev{op: "insert", t: 300, i: 1, id: "a"}.raw().Lookup("_id").Document()
	if len(w) != 3 || !w[1].Probe || w[1].BatchSize != 1 || !bytes.Equal(w[1].ResumeAfter, aTok) ||
		!bytes.Equal(w[2].ResumeAfter, big.raw().Lookup("_id").Document()) {
		t.Fatalf("streams opened: %+v", w)
	}
	if !slicesContain(streamPipeline(w[1]), "fullDocument") || !slicesContain(streamPipeline(w[0]), "updateDescription") {
		t.Fatalf("pipelines do not project the large fields away: %v / %v", streamPipeline(w[0]), streamPipeline(w[1]))
	}
	checkTable(t, events(t, r), want{"a": doc("a"), "b": doc("b")})
	dl := consumed(t, r.kafka, "rp.deadletter")
	if len(dl) != 1 {
		t.Fatalf("%d dead letters", len(dl))
	}
	d, err := envelope.DecodeDeadLetter(dl[0].Value)
	if err != nil || d.Version != (envelope.Version{T: 300, I: 2}) || string(d.Key) != keyOf("huge") || !strings.Contains(d.Reason, "10334") {
		t.Fatalf("dead letter %+v %v", d, err)
	}
	if got := testutil.ToFloat64(r.c.m.deadLetters.WithLabelValues(rns, "event_too_large")); got != 1 {
		t.Fatalf("dead-letter metric %v", got)
	}
}

func slicesContain(p mongo.Pipeline, field string) bool {
	return strings.Contains(fmt.Sprint(p), field)
}

// On 7.0+ large events arrive split into fragments; capture joins them.
func TestReplaySplitEventFragmentsAreJoined(t *testing.T) {
	full := ev{op: "insert", t: 400, i: 1, id: "s", doc: doc("s", "pad", strings.Repeat("z", 100))}.raw()
	var first, second bson.D
	elems, _ := full.Elements()
	for _, e := range elems {
		switch e.Key() {
		case "fullDocument":
			second = append(second, bson.E{Key: e.Key(), Value: e.Value()})
		case "_id":
		default:
			first = append(first, bson.E{Key: e.Key(), Value: e.Value()})
		}
	}
	frag := func(n int, d bson.D) bson.Raw {
		d = append(bson.D{{Key: "_id", Value: token(400, 1, n)}}, d...)
		d = append(d, bson.E{Key: "splitEvent", Value: bson.D{{Key: "fragment", Value: int32(n)}, {Key: "of", Value: int32(2)}}})
		return mustRaw(d)
	}
	src := &replaySource{streams: [][]step{{{events: []bson.Raw{frag(1, first), frag(2, second)}}}}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("stream: %v", err)
	}
	checkTable(t, events(t, r), want{"s": doc("s", "pad", strings.Repeat("z", 100))})
	if st := r.state(t); !bytes.Equal(st.Token, token(400, 1, 2)) {
		t.Fatalf("checkpoint %s, want the last fragment's token", bson.Raw(st.Token))
	}
}

// Views and time-series collections cannot be watched: a clear error at
// start, no stream opened, no retry.
func TestReplayUnwatchableCollections(t *testing.T) {
	for _, typ := range []string{"view", "timeseries"} {
		src := &replaySource{typ: typ}
		r := newReplayRig(t, src, Config{})
		err := r.c.runNamespace(context.Background(), rns)
		if !errors.Is(err, ErrUnwatchable) || !strings.Contains(err.Error(), typ) {
			t.Fatalf("%s: %v", typ, err)
		}
		if len(src.watches()) != 0 {
			t.Fatalf("%s: a stream was opened", typ)
		}
	}
}

// flakyPager serves a sorted list of documents and fails after every
// failEvery documents of a page, as a cursor killed by an election does.
type flakyPager struct {
	docs      []bson.Raw
	failEvery int
	fails     int
	calls     int
	always    bool // every read fails at once
}

func (f *flakyPager) page(_ context.Context, last *bson.RawValue, n int, docs []bson.Raw) ([]bson.Raw, error) {
	f.calls++
	if f.always {
		f.fails++
		return docs, mongo.CommandError{Code: 43, Name: "CursorNotFound"}
	}
	start := 0
	if last != nil {
		for start < len(f.docs) && !bytes.Equal(envelope.Key(f.docs[start].Lookup("_id")), envelope.Key(*last)) {
			start++
		}
		start++
	}
	for i := start; i < len(f.docs) && n > 0; i++ {
		if f.failEvery > 0 && i > start && (i-start)%f.failEvery == 0 {
			f.fails++
			return docs, mongo.CommandError{Code: 43, Name: "CursorNotFound"}
		}
		docs = append(docs, f.docs[i])
		n--
	}
	return docs, nil
}

// A chunk whose cursor dies part-way resumes after the last document read:
// nothing is lost or read twice. Past the retry budget the error stops the
// backfill.
func TestReadChunkResumesAfterCursorLoss(t *testing.T) {
	var docs []bson.Raw
	for i := 0; i < 50; i++ {
		docs = append(docs, mustRaw(doc(int64(i))))
	}
	c := &Capture{cfg: Config{Namespaces: []string{rns}, Backfill: BackfillConfig{Retries: 100, RetryBackoff: time.Microsecond}}.WithDefaults(),
		m: newMetrics(nil), log: slog.New(slog.DiscardHandler)}
	p := &flakyPager{docs: docs, failEvery: 7}
	var got []bson.Raw
	var last *bson.RawValue
	for {
		chunk, err := c.readChunk(context.Background(), rns, p, last, 20)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, chunk...)
		if len(chunk) < 20 {
			break
		}
		id := chunk[len(chunk)-1].Lookup("_id")
		last = &id
	}
	if len(got) != len(docs) || p.fails == 0 {
		t.Fatalf("read %d of %d documents with %d cursor losses", len(got), len(docs), p.fails)
	}
	for i := range docs {
		if !bytes.Equal(got[i], docs[i]) {
			t.Fatalf("document %d is %v, want %v", i, got[i], docs[i])
		}
	}
	if n := testutil.ToFloat64(c.m.backfillErrors.WithLabelValues(rns)); int(n) != p.fails {
		t.Fatalf("error metric %v, want %d", n, p.fails)
	}

	c.cfg.Backfill.Retries = 3
	_, err := c.readChunk(context.Background(), rns, &flakyPager{docs: docs, always: true}, nil, 20)
	if err == nil || !strings.Contains(err.Error(), "failed 4 times in a row") || !strings.Contains(err.Error(), "CursorNotFound") {
		t.Fatalf("budget exhausted: %v", err)
	}
}

// The operator's choice to continue after a drop reopens with startAfter and
// the invalidate's token (resumeAfter would fail with 260).
func TestReplayResumeAfterInvalidateUsesStartAfter(t *testing.T) {
	inv := ev{op: "invalidate", t: 200, i: 1, seq: 1}
	src := &replaySource{streams: [][]step{
		{batch(nil, ev{op: "drop", t: 200, i: 1}, inv)},
		{batch(nil, ev{op: "insert", t: 210, i: 1, id: "again", doc: doc("again")})},
	}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, ErrInvalidated) {
		t.Fatalf("got %v", err)
	}
	if err := r.c.resumeAfterInvalidate(ctx, rns); err != nil {
		t.Fatal(err)
	}
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("after resuming: %v", err)
	}
	w := src.watches()
	if len(w) != 2 || !bytes.Equal(w[1].StartAfter, inv.raw().Lookup("_id").Document()) || w[1].ResumeAfter != nil {
		t.Fatalf("reopened with %+v", w[len(w)-1])
	}
	checkTable(t, events(t, r), want{"again": doc("again")})
	if err := r.c.resumeAfterInvalidate(ctx, rns); err == nil {
		t.Fatal("resuming a stream that is not invalidated was accepted")
	}
}

// Why a namespace stopped is in its checkpoint, where status reads it.
func TestReplayStopReasonInStatus(t *testing.T) {
	src := &replaySource{streams: [][]step{{{err: cmdErr(286, "ChangeStreamHistoryLost")}}}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	putState(ctx, r.c, rns, streamState{StartT: 50})
	done := make(chan error, 1)
	go func() { done <- r.c.Run(ctx) }()
	for {
		s, _, err := Stream(ctx, r.store, rns)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(s.Stopped, "--reset-stream") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("status never showed the stop: %+v", s)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	<-done
}

// TestReplayRecordOverTopicLimitIsDeadLettered: a record under
// capture.max_record_bytes but over its topic's max.message.bytes is refused
// by Kafka with MESSAGE_TOO_LARGE. Retrying cannot help, so it is
// dead-lettered (truncated copy, reason, version) and the events around it
// in the same transaction and after it reach Kafka; the checkpoint moves
// past it.
func TestReplayRecordOverTopicLimitIsDeadLettered(t *testing.T) {
	// Random bytes: the producer compresses, and Kafka measures the
	// compressed batch against max.message.bytes.
	huge := make([]byte, 8000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range huge {
		huge[i] = byte(rng.Uint32())
	}
	last := ev{op: "insert", t: 300, i: 4, id: "c", doc: doc("c")}
	src := &replaySource{streams: [][]step{{
		batch(nil, ev{op: "insert", t: 300, i: 1, id: "a", doc: doc("a")},
			ev{op: "insert", t: 300, i: 2, id: "big", doc: doc("big", "s", huge)},
			ev{op: "insert", t: 300, i: 3, id: "b", doc: doc("b")}),
		batch(nil, last),
	}}}
	r := newReplayRig(t, src, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	adm := kadm.NewClient(r.c.plain)
	res, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: kadm.StringPtr("2000")}}, envelope.Topic("rp", rns))
	if err == nil {
		_, err = res.On(envelope.Topic("rp", rns), nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	putState(ctx, r.c, rns, streamState{StartT: 50})
	if err := r.c.stream(ctx, rns); !errors.Is(err, errScriptDone) {
		t.Fatalf("stream: %v", err)
	}
	checkTable(t, events(t, r), want{"a": doc("a"), "b": doc("b"), "c": doc("c")})
	dl := consumed(t, r.kafka, "rp.deadletter")
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	d, err := envelope.DecodeDeadLetter(dl[0].Value)
	if err != nil || d.Version != (envelope.Version{T: 300, I: 2}) || string(d.Key) != keyOf("big") ||
		d.Namespace != rns || d.Stage != "capture" || !strings.Contains(d.Reason, "max.message.bytes") {
		t.Fatalf("dead letter %+v %v", d, err)
	}
	if got := testutil.ToFloat64(r.c.m.deadLetters.WithLabelValues(rns, "too_large")); got != 1 {
		t.Fatalf("dead-letter metric %v", got)
	}
	if st := r.state(t); !bytes.Equal(st.Token, last.raw().Lookup("_id").Document()) {
		t.Fatalf("checkpoint %x, want past the last event", st.Token)
	}
}
