package reconcile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
)

func TestBucketsTileTheRing(t *testing.T) {
	for _, bits := range []int{1, 8, 13, 20, 24} {
		n := uint32(1) << bits
		if bucketFirst(0, bits) != math.MinInt64 || bucketLast(n-1, bits) != math.MaxInt64 {
			t.Fatalf("bits %d: ring not covered: [%d, %d]", bits, bucketFirst(0, bits), bucketLast(n-1, bits))
		}
		for _, b := range []uint32{0, 1, n / 2, n - 2, n - 1} {
			if b >= n {
				continue
			}
			if bucketOf(bucketFirst(b, bits), bits) != b || bucketOf(bucketLast(b, bits), bits) != b {
				t.Fatalf("bits %d leaf %d: its bounds fall elsewhere", bits, b)
			}
			if b+1 < n && bucketLast(b, bits)+1 != bucketFirst(b+1, bits) {
				t.Fatalf("bits %d: gap after leaf %d", bits, b)
			}
		}
		rng := rand.New(rand.NewPCG(1, uint64(bits)))
		for range 1000 {
			tok := int64(rng.Uint64())
			b := bucketOf(tok, bits)
			if tok < bucketFirst(b, bits) || tok > bucketLast(b, bits) {
				t.Fatalf("bits %d: token %d outside its leaf %d", bits, tok, b)
			}
		}
	}
}

func TestBucketBitsFor(t *testing.T) {
	for _, c := range []struct {
		rows int64
		bits int
	}{{0, 8}, {10_000, 8}, {100_000, 11}, {1_000_000, 14}, {1 << 40, 20}} {
		if got := bucketBitsFor(c.rows); got != c.bits {
			t.Errorf("bucketBitsFor(%d) = %d, want %d", c.rows, got, c.bits)
		}
	}
}

// Tokens Cassandra's Murmur3Partitioner gives int partition keys 1, 2, 3
// (checked against a live node by TestIntegrationTokensMatchCassandra).
func TestTokenOfKnownKeys(t *testing.T) {
	for k, want := range map[int32]int64{1: -4069959284402364209, 2: -3248873570005575792, 3: 9010454139840013625} {
		if got := tokenOf(binary.BigEndian.AppendUint32(nil, uint32(k))); got != want {
			t.Errorf("token(%d) = %d, want %d", k, got, want)
		}
	}
	// Tails of every length exercise the sign-extension quirk.
	seen := map[int64]bool{}
	for n := range 40 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(0x80 + i)
		}
		seen[tokenOf(b)] = true
	}
	if len(seen) != 40 {
		t.Errorf("%d distinct tokens for 40 keys", len(seen))
	}
}

func TestTreeDiffFindsExactlyTheChangedLeaves(t *testing.T) {
	const bits = 10
	a, b := newTree(bits), newTree(bits)
	rng := rand.New(rand.NewPCG(3, 4))
	type row struct {
		tok int64
		h   uint64
	}
	var rows []row
	for range 20_000 {
		rows = append(rows, row{int64(rng.Uint64()), rng.Uint64()})
	}
	for _, r := range rows {
		a.add(r.tok, r.h)
	}
	// The other side sees the same rows in another order...
	for _, i := range rng.Perm(len(rows)) {
		b.add(rows[i].tok, rows[i].h)
	}
	if d, _, _ := diff(a, b); len(d) != 0 {
		t.Fatalf("equal row sets differ in leaves %v", d)
	}
	// ...then one row goes missing, one changes, one is added twice (a
	// duplicate must not cancel out), one is added.
	want := []uint32{bucketOf(rows[10].tok, bits), bucketOf(rows[20].tok, bits), bucketOf(rows[30].tok, bits), bucketOf(42, bits)}
	c := newTree(bits)
	for i, r := range rows {
		switch i {
		case 10:
			continue
		case 20:
			r.h++
		case 30:
			c.add(r.tok, r.h)
		}
		c.add(r.tok, r.h)
	}
	c.add(42, 7)
	got, visited, err := diff(a, c)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		t.Fatalf("differing leaves %v, want %v", got, want)
	}
	if visited > 4*len(want)*(bits+1) {
		t.Errorf("visited %d nodes for %d differing leaves: the walk does not prune", visited, len(want))
	}
	if _, _, err := diff(a, newTree(bits+1)); err == nil {
		t.Error("trees of different sizes compared")
	}
}

func TestTreeMarshalRoundTrip(t *testing.T) {
	a := newTree(9)
	for i := range 1000 {
		a.add(int64(uint64(i)*0x9E3779B97F4A7C15), uint64(i))
	}
	b, _ := a.MarshalBinary()
	var c tree
	if err := c.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := diff(a, &c); len(d) != 0 || c.bits != 9 {
		t.Fatalf("round trip changed the tree: %v", d)
	}
	if err := c.UnmarshalBinary(b[:len(b)-1]); err == nil {
		t.Error("a truncated tree was accepted")
	}
}

const testSpec = `version: "t1"
collections:
  - namespace: app.users
    tables:
      - keyspace: app
        table: users
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: email, type: text, from: email}
          - {name: age, type: int, from: age}
      - keyspace: app
        table: by_pair
        partition_key: [a, b]
        clustering_key: [id]
        columns:
          - {name: a, type: text, from: email}
          - {name: b, type: bigint, from: n}
          - {name: id, type: text, from: _id, convert: string}
`

func TestPartitionKeyBytes(t *testing.T) {
	m, err := transform.Parse([]byte(testSpec))
	if err != nil {
		t.Fatal(err)
	}
	users, pair := m.Tables("app.users")[0], m.Tables("app.users")[1]
	b, err := partitionKeyBytes(nil, users, []any{"abc", "x", int32(1)})
	if err != nil || string(b) != "abc" {
		t.Fatalf("single column: %q %v", b, err)
	}
	// Composite: each component is a 2-byte length, the value and a zero byte.
	b, err = partitionKeyBytes(nil, pair, []any{"ab", int64(7), "id"})
	want := []byte{0, 2, 'a', 'b', 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7, 0}
	if err != nil || !slices.Equal(b, want) {
		t.Fatalf("composite: %v %v, want %v", b, err, want)
	}
	if _, err := partitionKeyBytes(nil, users, []any{struct{}{}, nil, nil}); err == nil {
		t.Error("an unsupported key type was accepted")
	}
}

// TestClassifyWithoutSource: the classes and differing columns a re-check
// reports once the pipeline has caught up, from the two sides' values alone.
func TestClassifyWithoutSource(t *testing.T) {
	m, err := transform.Parse([]byte(testSpec))
	if err != nil {
		t.Fatal(err)
	}
	users := m.Tables("app.users")[0]
	rd := &round{r: &Reconciler{}, tables: []*transform.Table{users}}
	key, _ := users.EncodeKey([]any{"7"})
	exp := []any{"7", "a@x.org", int32(30)}
	for _, c := range []struct {
		name     string
		exp, act []any
		class    string
		columns  []string
	}{
		{"missing", exp, nil, ClassMissing, nil},
		{"extra", nil, exp, ClassExtra, nil},
		{"one column", exp, []any{"7", "a@x.org", int32(31)}, ClassDifferent, []string{"age"}},
		{"two columns", exp, []any{"7", "b@x.org", int32(0)}, ClassDifferent, []string{"email", "age"}},
		// gocql scans a null int as 0: both sides fold it the same way.
		{"null is zero", []any{"7", nil, nil}, []any{"7", "", int32(0)}, "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if sameRow(users, c.exp, c.act) != (c.class == "") {
				t.Fatalf("sameRow = %v", !(c.class == ""))
			}
			if c.class == "" {
				return
			}
			o := rd.divergent(t.Context(), users, key, []any{"7"}, nil, c.exp, c.act, 0)
			if o.class != c.class || !slices.Equal(o.sample.Columns, c.columns) || o.ref.Class != c.class {
				t.Fatalf("class %q columns %v, want %q %v", o.class, o.sample.Columns, c.class, c.columns)
			}
			if o.sample.PrimaryKey["id"] != "7" {
				t.Errorf("sample key %v", o.sample.PrimaryKey)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"schedule", Config{Interval: time.Hour, DocsPerSecond: 5000, RowsPerSecond: 10000}, true},
		{"negative interval", Config{Interval: -1}, false},
		{"bits", Config{BucketBits: 25}, false},
		{"rates", Config{RowsPerSecond: -1}, false},
		{"sample", Config{SampleSize: 20_000}, false},
		{"concurrency", Config{Concurrency: 1000}, false},
	} {
		err := c.cfg.WithDefaults().Validate()
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestReportsFolder(t *testing.T) {
	rs := Reports{Dir: t.TempDir()}
	if _, err := rs.Get("latest"); !errors.Is(err, ErrNoReport) {
		t.Fatalf("empty folder: %v", err)
	}
	at := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 3 {
		r := &Report{SchemaVersion: SchemaVersion, ID: newID(at.Add(time.Duration(i) * time.Minute)), Status: "clean",
			Counts: map[string]int64{ClassMissing: int64(i)}}
		if err := rs.Write(r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	got, err := rs.List()
	if err != nil || !slices.Equal(got, ids) {
		t.Fatalf("list %v %v, want %v", got, err, ids)
	}
	r, err := rs.Get("latest")
	if err != nil || r.ID != ids[2] || r.Counts[ClassMissing] != 2 || r.SchemaVersion != SchemaVersion {
		t.Fatalf("latest: %+v %v", r, err)
	}
	if _, err := rs.Get("../../etc/passwd"); !errors.Is(err, ErrNoReport) {
		t.Fatalf("a path was accepted as an id: %v", err)
	}
}

// TestReportIDsSortWithinASecond: rounds started in the same second sort in
// the order they started, so "latest" is the newest (two short rounds used
// to come out in random order); ids keep their documented form.
func TestReportIDsSortWithinASecond(t *testing.T) {
	at := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	for range 200 {
		var prev string
		for _, ms := range []int{0, 1, 2, 499, 998, 999, 1000} {
			id := newID(at.Add(time.Duration(ms) * time.Millisecond))
			if !idRE.MatchString(id) {
				t.Fatalf("id %q does not match %s", id, idRE)
			}
			if id <= prev {
				t.Fatalf("id at +%d ms %q sorts before the earlier %q", ms, id, prev)
			}
			prev = id
		}
	}
}

// TestReportsPrune checks reconcile.keep_reports' rule: the newest reports
// stay, the oldest go, and files that are not reports are left alone.
func TestReportsPrune(t *testing.T) {
	rs := Reports{Dir: t.TempDir()}
	at := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 5 {
		r := &Report{SchemaVersion: SchemaVersion, ID: newID(at.Add(time.Duration(i) * time.Minute)), Status: "clean"}
		if err := rs.Write(r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	other := filepath.Join(rs.Dir, "notes.json")
	if err := os.WriteFile(other, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := rs.Prune(2); err != nil {
		t.Fatal(err)
	}
	if got, _ := rs.List(); !slices.Equal(got, ids[3:]) {
		t.Errorf("after Prune(2): %v, want the newest two %v", got, ids[3:])
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Prune removed a file that is not a report: %v", err)
	}
	if err := rs.Prune(10); err != nil {
		t.Fatal(err)
	}
	if got, _ := rs.List(); len(got) != 2 {
		t.Errorf("Prune(10) of 2 reports left %v", got)
	}
	if err := (Config{KeepReports: -1}).WithDefaults().Validate(); err == nil {
		t.Error("keep_reports -1 accepted")
	}
	if c := (Config{}).WithDefaults(); c.KeepReports != DefaultKeepReports {
		t.Errorf("keep_reports default %d, want %d", c.KeepReports, DefaultKeepReports)
	}
}

func TestScopeKey(t *testing.T) {
	lo, hi := int64(-5), int64(9)
	for _, c := range []struct {
		s    Scope
		want string
	}{
		{Scope{Namespace: "app.users"}, "app.users"},
		{Scope{Namespace: "app.users", Table: "app.users_by_email"}, "app.users_by_email"},
		{Scope{Namespace: "app.users", MinToken: &lo, MaxToken: &hi}, "app.users[-5,9]"},
		{Scope{Namespace: "app.users", IDs: []string{"1", "2"}}, "app.users(2 ids)"},
	} {
		if got := c.s.Key(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.s, got, c.want)
		}
	}
	ids, err := parseIDs([]string{"42", `"abc"`, `{"$oid":"5f1d7f0a2b3c4d5e6f708192"}`})
	if err != nil || len(ids) != 3 || ids[0].Int32() != 42 || ids[1].StringValue() != "abc" {
		t.Fatalf("parseIDs: %v %v", ids, err)
	}
	if _, err := parseIDs([]string{"{bad"}); err == nil {
		t.Error("bad extended JSON accepted")
	}
}

func mustRaw(t *testing.T, v any) bson.RawValue {
	t.Helper()
	typ, data, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: data}
}

// TestDivergentIDs checks which rounds hand rollout a complete list of the
// documents to re-emit: each document once, and no list when the round did
// not finish, was truncated, found a row no document maps to, or found more
// documents than a summary holds.
func TestDivergentIDs(t *testing.T) {
	ref := func(id string) KeyRef {
		k := KeyRef{Table: "app.users", Key: []byte("k" + id), Class: ClassDifferent}
		if id != "" {
			k.ID = []byte(id)
		}
		return k
	}
	many := &Report{Status: "divergent"}
	for i := range checkpoints.SummaryIDsMax + 1 {
		many.Divergent = append(many.Divergent, ref(fmt.Sprint(i)))
	}
	for _, c := range []struct {
		name     string
		rep      *Report
		ids      []string
		complete bool
	}{
		{"clean", &Report{Status: "clean"}, nil, true},
		{"two tables, one document", &Report{Status: "divergent", Divergent: []KeyRef{ref("a"), ref("b"), ref("a")}}, []string{"a", "b"}, true},
		{"incomplete", &Report{Status: "incomplete", Divergent: []KeyRef{ref("a")}}, nil, false},
		{"truncated", &Report{Status: "divergent", Truncated: true, Divergent: []KeyRef{ref("a")}}, nil, false},
		{"extra row without document", &Report{Status: "divergent", Divergent: []KeyRef{ref("a"), ref("")}}, nil, false},
		{"too many", many, nil, false},
	} {
		ids, complete := divergentIDs(c.rep)
		var got []string
		for _, id := range ids {
			got = append(got, string(id))
		}
		if complete != c.complete || !slices.Equal(got, c.ids) {
			t.Errorf("%s: got %v complete=%v, want %v complete=%v", c.name, got, complete, c.ids, c.complete)
		}
	}
}
