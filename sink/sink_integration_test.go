//go:build integration

package sink

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
)

type event struct {
	op  envelope.Op
	id  int64
	ver envelope.Version
	doc bson.D
}

func userDoc(id int64, email string, v int, withTags bool) bson.D {
	d := bson.D{{Key: "_id", Value: id}, {Key: "email", Value: email}, {Key: "name", Value: bson.D{{Key: "first", Value: "U"}, {Key: "last", Value: fmt.Sprint(id)}}},
		{Key: "age", Value: int32(20 + v)}, {Key: "score", Value: float64(v) / 3}}
	if withTags {
		d = append(d, bson.E{Key: "tags", Value: bson.A{"a", fmt.Sprint(v)}}, bson.E{Key: "address", Value: bson.D{{Key: "city", Value: "Paris"}}})
	}
	return d
}

func produce(t *testing.T, ctx context.Context, cl *kgo.Client, topic, ns string, evs []event) {
	t.Helper()
	for _, e := range evs {
		id := bsonValue(t, e.id)
		ev := envelope.Event{Op: e.op, Namespace: ns, ID: id, Version: e.ver}
		if e.doc != nil {
			ev.Doc, _ = bson.Marshal(e.doc)
		}
		b, err := envelope.Encode(nil, &ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: ev.Key(), Value: b}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func bsonValue(t *testing.T, v any) bson.RawValue {
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: data}
}

// runUntilCaughtUp runs a sink with a fresh group (so it reads the topic from
// the start) until it has applied every record, then stops it. reg, when not
// nil, receives the sink's metrics.
func runUntilCaughtUp(t *testing.T, m *transform.Mapping, s *gocql.Session, prefix string, want int64, reg prometheus.Registerer) {
	t.Helper()
	runUntilCaughtUpGroup(t, m, s, prefix, testbed.UniqueName(t, "g"), checkpointstest.New(), want, reg)
}

// runUntilCaughtUpGroup is runUntilCaughtUp for a given group and store.
func runUntilCaughtUpGroup(t *testing.T, m *transform.Mapping, s *gocql.Session, prefix, group string, store checkpoints.Store, want int64, reg prometheus.Registerer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := New(Config{Group: group, TopicPrefix: prefix},
		Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Writer: w, Mapping: m,
			Store: store, Logger: slog.Default(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	done := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { done <- sk.Run(rctx) }()
	for {
		var applied int64
		for _, l := range sk.Lag() {
			applied += max(0, l.Committed)
		}
		if applied >= want {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("sink stopped: %v", err)
		case <-ctx.Done():
			t.Fatalf("sink applied %d of %d records before the deadline", applied, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationSinkReplayIsIdempotent applies a topic holding inserts,
// updates that drop fields and change the derived key, out-of-order versions
// and deletes; then replays it from the start twice more. Cassandra must equal
// the transform of the final documents after every pass.
func TestIntegrationSinkReplayIsIdempotent(t *testing.T) {
	s := testbed.Cassandra(t)
	adm := testbed.KafkaAdmin(t)
	ctx := context.Background()
	prefix := testbed.UniqueName(t, "sink")
	ns := "shop.users"
	topic := prefix + "." + ns
	testbed.CreateTopic(t, adm, topic, 4)
	ks := testbed.UniqueName(t, "ks")
	m, _ := testbed.UsersMapping(t, s, ns, ks)

	final := map[int64]bson.D{}
	var evs []event
	const n = 300
	for i := int64(0); i < n; i++ {
		v1 := envelope.Version{T: 1000, I: uint32(i)}
		v2 := envelope.Version{T: 2000, I: uint32(i)}
		d1 := userDoc(i, fmt.Sprintf("User%d@Example.com", i), 1, true)
		evs = append(evs, event{envelope.OpBackfill, i, envelope.Below(envelope.Version{T: 1000}), d1})
		evs = append(evs, event{envelope.OpInsert, i, v1, d1})
		final[i] = d1
		switch i % 5 {
		case 0: // fields disappear and the email (a derived table's key) changes
			d2 := userDoc(i, fmt.Sprintf("renamed%d@example.com", i), 2, false)
			evs = append(evs, event{envelope.OpUpdate, i, v2, d2})
			final[i] = d2
		case 1:
			evs = append(evs, event{envelope.OpDelete, i, v2, nil})
			delete(final, i)
		case 2: // the newer version arrives first, then an older one
			d3 := userDoc(i, fmt.Sprintf("late%d@example.com", i), 3, true)
			evs = append(evs, event{envelope.OpReplace, i, envelope.Version{T: 3000, I: uint32(i)}, d3})
			evs = append(evs, event{envelope.OpUpdate, i, v2, userDoc(i, fmt.Sprintf("stale%d@example.com", i), 2, true)})
			final[i] = d3
		case 3: // an update whose lookup found nothing, then the delete
			evs = append(evs, event{envelope.OpUpdate, i, v2, nil})
			evs = append(evs, event{envelope.OpDelete, i, envelope.Version{T: 2001, I: uint32(i)}, nil})
			delete(final, i)
		}
	}
	prod, _ := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	defer prod.Close()
	produce(t, ctx, prod, topic, ns, evs)

	var finalDocs []bson.Raw
	for _, d := range final {
		raw, _ := bson.Marshal(d)
		finalDocs = append(finalDocs, raw)
	}
	want := testbed.Expected(t, m, ns, finalDocs)
	for pass := 1; pass <= 3; pass++ {
		runUntilCaughtUp(t, m, s, prefix, int64(len(evs)), nil)
		got := testbed.Snapshot(t, s, m, ns)
		if !bytes.Equal(got, want) {
			gl, wl := bytes.Count(got, []byte{'\n'}), bytes.Count(want, []byte{'\n'})
			t.Fatalf("pass %d: Cassandra (%d rows) differs from the transform of the source (%d rows); first difference:\n got %q\nwant %q",
				pass, gl+1, wl+1, testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
		}
	}
	var stale int
	if err := s.Query("SELECT count(*) FROM "+ks+".users_by_email WHERE email = ? ", "stale2@example.com").Scan(&stale); err != nil || stale != 0 {
		t.Fatalf("older out-of-order version left a zombie row: %d %v", stale, err)
	}
}

// usersFixture is a one-partition topic holding the inserts of n users (the
// email of user i from email(i)) and a keyspace with the users tables.
type usersFixture struct {
	s      *gocql.Session
	m      *transform.Mapping
	prefix string
	ns, ks string
	docs   []bson.Raw
	spec   string // the spec's text
}

func newUsersFixture(t *testing.T, ctx context.Context, n int64, email func(i int64) string) *usersFixture {
	t.Helper()
	f := &usersFixture{s: testbed.Cassandra(t), prefix: testbed.UniqueName(t, "sink"), ns: "shop.users", ks: testbed.UniqueName(t, "ks")}
	topic := f.prefix + "." + f.ns
	testbed.CreateTopic(t, testbed.KafkaAdmin(t), topic, 1)
	f.m, f.spec = testbed.UsersMapping(t, f.s, f.ns, f.ks)
	var evs []event
	for i := range n {
		d := userDoc(i, email(i), 1, true)
		evs = append(evs, event{envelope.OpInsert, i, envelope.Version{T: 1000, I: uint32(i)}, d})
		raw, err := bson.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		f.docs = append(f.docs, raw)
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	produce(t, ctx, prod, topic, f.ns, evs)
	return f
}

// TestIntegrationSinkDeadLettersWhatCassandraRejects writes users among which
// one has an empty email, the partition key of users_by_email: Cassandra
// refuses that row ("Key may not be empty"). The record must go to the
// dead-letter topic at once, without retries, and every other row, including
// the same user's users row, must be written.
func TestIntegrationSinkDeadLettersWhatCassandraRejects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n, bad = 20, 7
	f := newUsersFixture(t, ctx, n, func(i int64) string {
		if i == bad {
			return ""
		}
		return fmt.Sprintf("u%d@example.com", i)
	})
	s, m, ns, docs := f.s, f.m, f.ns, f.docs
	reg := prometheus.NewRegistry()
	runUntilCaughtUp(t, m, s, f.prefix, n, reg)
	dead := readDeadLetters(t, ctx, kgo.SeedBrokers(testbed.KafkaBrokers()...), f.prefix)
	if len(dead) != 1 || dead[0].Offset != bad || dead[0].Stage != "sink" ||
		!strings.Contains(dead[0].Reason, "rejected") || !strings.Contains(dead[0].Reason, "Key may not be empty") {
		t.Fatalf("dead letters %+v; want one, for offset %d, saying Cassandra rejected it", dead, bad)
	}
	if got := counterValue(t, reg, "tidemark_sink_retries_total", ""); got != 0 {
		t.Fatalf("%v retries: a write Cassandra rejects as invalid must not be retried", got)
	}
	// Everything else is there: the expected rows minus the refused one.
	rows := bytes.Split(testbed.Expected(t, m, ns, docs), []byte{'\n'})
	refused := bytes.Split(testbed.Expected(t, m, ns, docs[bad:bad+1]), []byte{'\n'})
	if len(refused) != 2 {
		t.Fatalf("the bad document maps to %d rows, want 2", len(refused))
	}
	gone := refused[slices.IndexFunc(refused, func(r []byte) bool { return bytes.HasPrefix(r, []byte("users_by_email|")) })]
	want := bytes.Join(slices.DeleteFunc(rows, func(r []byte) bool { return bytes.Equal(r, gone) }), []byte{'\n'})
	if got := testbed.Snapshot(t, s, m, ns); !bytes.Equal(got, want) {
		t.Fatalf("Cassandra differs from the transform of the source less the refused row; first difference:\n got %q\nwant %q",
			testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
	}
}

// TestIntegrationSinkStopsWhenATableIsGone drops users_by_email before the
// sink runs: Cassandra answers every write to it with "table ... does not
// exist". The sink must stop with that cause, commit nothing and dead-letter
// nothing; once the table is back, a new sink writes everything.
func TestIntegrationSinkStopsWhenATableIsGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 20
	f := newUsersFixture(t, ctx, n, func(i int64) string { return fmt.Sprintf("u%d@example.com", i) })
	s, m, prefix, ns, ks, docs := f.s, f.m, f.prefix, f.ns, f.ks, f.docs
	if err := s.Query("DROP TABLE " + ks + ".users_by_email").Exec(); err != nil {
		t.Fatal(err)
	}
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	group := testbed.UniqueName(t, "g")
	store := checkpointstest.New()
	sk, err := New(Config{Group: group, TopicPrefix: prefix},
		Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Writer: w, Mapping: m, Store: store,
			Logger: slog.Default(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	err = sk.Run(ctx)
	lag := sk.Lag()
	sk.Close()
	checkStoppedOnBrokenTarget(t, err, lag, reg)
	// Put the table back: the same group resumes and nothing was lost.
	testbed.UsersSchema(t, s, ks)
	runUntilCaughtUpGroup(t, m, s, prefix, group, store, n, nil)
	if got, want := testbed.Snapshot(t, s, m, ns), testbed.Expected(t, m, ns, docs); !bytes.Equal(got, want) {
		t.Fatalf("after the table came back Cassandra differs from the source; first difference:\n got %q\nwant %q",
			testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
	}
}
