package trace

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
)

const ns = "app.users"

func usersMapping(t *testing.T) *transform.Mapping {
	t.Helper()
	m, err := transform.Load(filepath.Join("..", "examples", "specs", "users.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type fakeSource struct {
	docs map[string]bson.Raw
	err  error
}

func (f fakeSource) Find(_ context.Context, _ string, id bson.RawValue) (bson.Raw, envelope.Version, error) {
	return f.docs[string(envelope.Key(id))], envelope.Version{T: 100, I: 1}, f.err
}

type fakeLog struct{ scan LogScan }

func (f fakeLog) Scan(_ context.Context, topic string, key []byte, _ int64) (LogScan, error) {
	s := f.scan
	s.Topic = topic
	return s, nil
}

type storedRow struct {
	values []any
}

// fakeTarget holds rows by table and canonical key, and the key map by table and envelope key.
type fakeTarget struct {
	rows   map[string]storedRow
	keymap map[string][]byte
}

func (f *fakeTarget) put(t *transform.Table, values []any) {
	k, err := t.EncodeKey(t.KeyValues(values))
	if err != nil {
		panic(err)
	}
	f.rows[t.QualifiedName()+"/"+string(k)] = storedRow{values: values}
}

func (f *fakeTarget) Row(_ context.Context, t *transform.Table, key []any) (TargetRow, bool, error) {
	k, err := t.EncodeKey(key)
	if err != nil {
		return TargetRow{}, false, err
	}
	r, ok := f.rows[t.QualifiedName()+"/"+string(k)]
	if !ok {
		return TargetRow{}, false, nil
	}
	return TargetRow{PrimaryKey: keyNamed(t, key), Values: named(t, r.values), values: r.values}, true, nil
}

func (f *fakeTarget) KeyMap(_ context.Context, t *transform.Table, id []byte) ([]byte, int64, bool, error) {
	k, ok := f.keymap[t.QualifiedName()+"/"+string(id)]
	return k, 7_000_000, ok, nil
}

type fakeReports []*reconcile.Report

func (f fakeReports) Latest(n int) ([]*reconcile.Report, error) { return f[:min(n, len(f))], nil }

func doc(t *testing.T, email string, age int32) bson.Raw {
	t.Helper()
	b, err := bson.Marshal(bson.D{{Key: "_id", Value: "u1"}, {Key: "email", Value: email}, {Key: "age", Value: age},
		{Key: "name", Value: bson.D{{Key: "first", Value: "Ada"}, {Key: "last", Value: "L"}}}, {Key: "tags", Value: bson.A{"x"}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFollow drives every state a journey can end in from evidence that
// produces it: the verdict must follow from what each server holds.
func TestFollow(t *testing.T) {
	m := usersMapping(t)
	id, err := ParseID(`"u1"`)
	if err != nil {
		t.Fatal(err)
	}
	key := envelope.Key(id)
	users, byEmail := m.Tables(ns)[0], m.Tables(ns)[1]
	rowsOf := func(d bson.Raw) []transform.Row {
		rs, err := m.Apply(ns, d)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	cur := doc(t, "ada@example.com", 36)
	old := doc(t, "old@example.com", 36)
	applied := LogScan{Partition: 3, Start: 0, End: 10, Committed: 10, Complete: true,
		Records: []Record{{Offset: 4, Op: "insert", Applied: true}, {Offset: 9, Op: "update", Applied: true}}}
	pending := applied
	pending.Committed = 9
	pending.Records = []Record{{Offset: 4, Op: "insert", Applied: true}, {Offset: 9, Op: "update", Applied: false}}

	written := func(d bson.Raw) *fakeTarget {
		f := &fakeTarget{rows: map[string]storedRow{}, keymap: map[string][]byte{}}
		for _, r := range rowsOf(d) {
			f.put(r.Table, r.Values)
			if r.Table.NeedsKeyMap() {
				f.keymap[r.Table.QualifiedName()+"/"+string(key)] = r.Key
			}
		}
		return f
	}
	cases := []struct {
		name    string
		source  fakeSource
		log     LogScan
		target  *fakeTarget
		want    string
		differs map[string][]string // table → columns that differ (nil: match)
		stray   string              // table holding a stray row
	}{
		{name: "written and applied", source: fakeSource{docs: map[string]bson.Raw{string(key): cur}}, log: applied,
			target: written(cur), want: StateInSync},
		{name: "newest record not applied yet", source: fakeSource{docs: map[string]bson.Raw{string(key): cur}}, log: pending,
			target: written(old), want: StateInFlight,
			differs: map[string][]string{"app.users": {"email"}, "app.users_by_email": nil}, stray: "app.users_by_email"},
		{name: "applied yet a column differs", source: fakeSource{docs: map[string]bson.Raw{string(key): cur}}, log: applied,
			target: func() *fakeTarget {
				f := written(cur)
				vals := append([]any(nil), rowsOf(cur)[0].Values...)
				vals[3] = int32(99) // age
				f.put(users, vals)
				return f
			}(), want: StateDivergent, differs: map[string][]string{"app.users": {"age"}}},
		{name: "derived key changed, old row left behind", source: fakeSource{docs: map[string]bson.Raw{string(key): cur}}, log: applied,
			target: func() *fakeTarget {
				f := written(cur)
				for _, r := range rowsOf(old) {
					if r.Table == byEmail {
						f.put(byEmail, r.Values)
						f.keymap[byEmail.QualifiedName()+"/"+string(key)] = r.Key
					}
				}
				return f
			}(), want: StateDivergent, differs: map[string][]string{"app.users_by_email": nil}, stray: "app.users_by_email"},
		{name: "deleted everywhere", source: fakeSource{docs: map[string]bson.Raw{}}, log: applied,
			target: &fakeTarget{rows: map[string]storedRow{}, keymap: map[string][]byte{}}, want: StateAbsent},
		{name: "deleted in the source, row left in the target", source: fakeSource{docs: map[string]bson.Raw{}}, log: applied,
			target: written(cur), want: StateDivergent, differs: map[string][]string{"app.users": nil, "app.users_by_email": nil}},
		{name: "source unreachable", source: fakeSource{err: errors.New("no primary")}, log: applied,
			target: written(cur), want: StateUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j, err := Follow(context.Background(), Deps{Mapping: m, Source: c.source, Log: fakeLog{c.log}, Target: c.target,
				Topic: func(ns string) string { return "tidemark." + ns }}, ns, id)
			if err != nil {
				t.Fatal(err)
			}
			if j.State != c.want {
				t.Fatalf("state %s (%s), want %s", j.State, j.Summary, c.want)
			}
			if k, err := hex.DecodeString(j.Key); err != nil || !bytes.Equal(k, key) {
				t.Fatalf("key %s, want %x", j.Key, key)
			}
			if j.Kafka.Topic != "tidemark.app.users" {
				t.Fatalf("topic %s", j.Kafka.Topic)
			}
			for _, h := range j.Tables {
				cols, listed := c.differs[h.Table]
				if listed == h.Match && c.want != StateUnknown {
					t.Errorf("%s: match %v, want %v (columns %v)", h.Table, h.Match, !listed, h.Columns)
				}
				if listed && !equalStrings(cols, h.Columns) {
					t.Errorf("%s: differing columns %v, want %v", h.Table, h.Columns, cols)
				}
				if (h.Stray != nil) != (c.stray == h.Table) {
					t.Errorf("%s: stray row %v, want one: %v", h.Table, h.Stray, c.stray == h.Table)
				}
			}
		})
	}
}

func TestVerdicts(t *testing.T) {
	id, _ := ParseID(`"u1"`)
	other, _ := ParseID(`"u2"`)
	key := envelope.Key(id)
	at := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	reps := fakeReports{
		{ID: "r6", Start: at, Status: "clean", Scope: reconcile.Scope{Namespace: "app.other"}},
		{ID: "r5", Start: at, Status: "divergent", Scope: reconcile.Scope{Namespace: ns},
			Divergent: []reconcile.KeyRef{{Table: "app.users", ID: envelope.Key(other), Class: "missing"}, {Table: "app.users", ID: key, Class: "stale"}}},
		{ID: "r4", Start: at, Status: "clean", Scope: reconcile.Scope{Namespace: ns},
			Sample: []reconcile.KeySample{{Table: "app.users", Class: "in_flight", SourceID: `"u1"`}}},
		{ID: "r3", Start: at, Status: "divergent", Truncated: true, Scope: reconcile.Scope{Namespace: ns}},
		{ID: "r2", Start: at, Status: "clean", Scope: reconcile.Scope{Namespace: ns, IDs: []string{`"u2"`}}},
		{ID: "r1", Start: at, Status: "clean", Scope: reconcile.Scope{Namespace: ns, IDs: []string{`"u1"`}}},
		{ID: "r0", Start: at, Status: "incomplete", Scope: reconcile.Scope{Namespace: ns}},
	}
	got := verdicts(reps, ns, id, key)
	want := []struct{ report, class string }{{"r5", "stale"}, {"r4", "in_flight"}, {"r3", "unknown"}, {"r1", "not_reported"}, {"r0", "unknown"}}
	if len(got) != len(want) {
		t.Fatalf("verdicts %+v, want %d", got, len(want))
	}
	for i, w := range want {
		if got[i].Report != w.report || got[i].Class != w.class {
			t.Errorf("verdict %d: %s %s, want %s %s", i, got[i].Report, got[i].Class, w.report, w.class)
		}
	}
}

func TestParseID(t *testing.T) {
	cases := []struct {
		in   string
		typ  bsontype.Type
		fail bool
	}{
		{in: `{"$oid":"65a1b2c3d4e5f60718293a4b"}`, typ: bson.TypeObjectID},
		{in: `"abc"`, typ: bson.TypeString},
		{in: `alice`, typ: bson.TypeString},
		{in: `42`, typ: bson.TypeInt32},
		{in: `{"$numberLong":"7"}`, typ: bson.TypeInt64},
		{in: `1.5`, typ: bson.TypeDouble},
		{in: `{"$uuid":"0b3f5ac0-4f55-4f1a-9c25-2b0c8d4f9e10"}`, typ: bson.TypeBinary},
		{in: `{"$date":"2026-01-02T03:04:05Z"}`, typ: bson.TypeDateTime},
		{in: `{"a":1}`, typ: bson.TypeEmbeddedDocument},
		{in: `true`, typ: bson.TypeBoolean},
		{in: `[1,2]`, fail: true},
		{in: `{"$oid":"nothex"}`, fail: true},
		{in: `"unterminated`, fail: true},
	}
	for _, c := range cases {
		v, err := ParseID(c.in)
		if c.fail {
			if err == nil {
				t.Errorf("%s: parsed as %v, want an error", c.in, v)
			}
			continue
		}
		if err != nil || v.Type != c.typ {
			t.Errorf("%s: %v %v, want type %v", c.in, v.Type, err, c.typ)
		}
	}
	// Integral numbers of any type are one _id, as in MongoDB's index.
	a, _ := ParseID(`42`)
	b, _ := ParseID(`{"$numberLong":"42"}`)
	if !bytes.Equal(envelope.Key(a), envelope.Key(b)) {
		t.Error("42 and NumberLong(42) trace different keys")
	}
}

func TestOneCell(t *testing.T) {
	for typ, want := range map[string]bool{"text": true, "decimal": true, "frozen<address>": true, "frozen<list<int>>": true,
		"set<text>": false, "map<text, text>": false, "list<int>": false, "address": false, " BigInt ": true} {
		if oneCell(typ) != want {
			t.Errorf("oneCell(%q) = %v", typ, !want)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
