//go:build integration

package sink

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// matrixSchema has a column of every replay-safe type the transform writes:
// every scalar (tinyint, date, time, inet and duration too), frozen list, set
// and map, non-frozen set and map (of scalars, of frozen lists and of tuples),
// a tuple, a vector (Cassandra 5.0), a frozen UDT, a non-frozen UDT (the
// spec's frozen<addr> feeding it) and a static column.
const matrixSchema = `
CREATE TYPE %[1]s.addr (street text, zip int, tags frozen<list<text>>);
CREATE TABLE %[1]s.matrix (
  bucket int, id text,
  s_note text static,
  c_text text, c_ascii ascii, c_varchar varchar, c_int int, c_bigint bigint, c_smallint smallint,
  c_varint varint, c_decimal decimal, c_float float, c_double double, c_bool boolean,
  c_ts timestamp, c_uuid uuid, c_timeuuid timeuuid, c_blob blob, c_json text,
  c_flist frozen<list<int>>, c_fset frozen<set<text>>, c_fmap frozen<map<text, int>>,
  c_set set<text>, c_set_int set<bigint>, c_map map<text, bigint>, c_map_fl map<text, frozen<list<int>>>,
  c_udt frozen<addr>, c_udt_nf addr,
  c_tiny tinyint, c_date date, c_time time, c_inet inet, c_dur duration,
  c_tuple tuple<int, text, frozen<list<int>>>, c_vec vector<float, 3>, c_map_tup map<text, frozen<tuple<int, text>>>,
  PRIMARY KEY ((bucket), id))`

const matrixSpec = `
version: matrix-v1
collections:
  - namespace: shop.matrix
    tables:
      - keyspace: %[1]s
        table: matrix
        partition_key: [bucket]
        clustering_key: [id]
        columns:
          - {name: bucket, type: int, compute: hash_bucket, args: [_id], buckets: 7}
          - {name: id, type: text, from: _id, convert: string}
          - {name: s_note, type: text, from: note}
          - {name: c_text, type: text, from: text}
          - {name: c_ascii, type: ascii, from: ascii}
          - {name: c_varchar, type: varchar, from: text}
          - {name: c_int, type: int, from: i32}
          - {name: c_bigint, type: bigint, from: i64}
          - {name: c_smallint, type: smallint, from: i16}
          - {name: c_varint, type: varint, from: big}
          - {name: c_decimal, type: decimal, from: dec}
          - {name: c_float, type: float, from: f}
          - {name: c_double, type: double, from: f}
          - {name: c_bool, type: boolean, from: ok}
          - {name: c_ts, type: timestamp, from: at}
          - {name: c_uuid, type: uuid, from: oid}
          - {name: c_timeuuid, type: timeuuid, from: tuuid}
          - {name: c_blob, type: blob, from: bin}
          - {name: c_json, type: text, from: nums, convert: json}
          - {name: c_flist, type: "frozen<list<int>>", from: nums}
          - {name: c_fset, type: "frozen<set<text>>", from: tags}
          - {name: c_fmap, type: "frozen<map<text, int>>", from: counts}
          - {name: c_set, type: "set<text>", from: tags}
          - {name: c_set_int, type: "set<bigint>", from: nums}
          - {name: c_map, type: "map<text, bigint>", from: counts}
          - {name: c_map_fl, type: "map<text, frozen<list<int>>>", from: series}
          - name: c_udt
            type: frozen<addr>
            from: addr
            fields:
              - {name: street, type: text, from: street}
              - {name: zip, type: int, from: zip}
              - {name: tags, type: "frozen<list<text>>", from: tags}
          - name: c_udt_nf
            type: frozen<addr>
            from: addr
            fields:
              - {name: street, type: text, from: street}
              - {name: zip, type: int, from: zip}
              - {name: tags, type: "frozen<list<text>>", from: tags}
          - {name: c_tiny, type: tinyint, from: tiny}
          - {name: c_date, type: date, from: day}
          - {name: c_time, type: time, from: clock}
          - {name: c_inet, type: inet, from: ip}
          - {name: c_dur, type: duration, from: dur}
          - {name: c_tuple, type: "tuple<int, text, frozen<list<int>>>", from: pair}
          - {name: c_vec, type: "vector<float, 3>", from: emb}
          - {name: c_map_tup, type: "map<text, frozen<tuple<int, text>>>", from: tmap}
`

// matrixDoc is document id in state v: every field varies with v, some are
// missing or null in some states, and collections grow and shrink.
func matrixDoc(id int64, v int) bson.D {
	tuuid := gocql.UUIDFromTime(time.Date(2026, 1, 1, 0, 0, int(id), v*1000, time.UTC))
	oid := primitive.ObjectID{}
	copy(oid[:], fmt.Appendf(nil, "%06d%06d", id, v))
	dec, _ := primitive.ParseDecimal128(fmt.Sprintf("%d.%02d", id, v))
	d := bson.D{{Key: "_id", Value: id},
		{Key: "note", Value: fmt.Sprintf("note %d/%d", id, v)},
		{Key: "text", Value: fmt.Sprintf("tëxt %d ✓ %d", id, v)},
		{Key: "ascii", Value: fmt.Sprintf("ascii-%d-%d", id, v)},
		{Key: "i32", Value: int32(id*1000 + int64(v))},
		{Key: "i64", Value: id<<40 + int64(v)},
		{Key: "i16", Value: int32(id%30000 - 15000)},
		{Key: "big", Value: dec128Int(new(big.Int).Lsh(big.NewInt(id+1), 70))},
		{Key: "dec", Value: dec},
		{Key: "f", Value: float64(id) + float64(v)/4},
		{Key: "ok", Value: (id+int64(v))%2 == 0},
		{Key: "at", Value: primitive.NewDateTimeFromTime(time.Date(1960+int(id%80), 3, 4, 5, 6, 7, v*1e6, time.UTC))},
		{Key: "oid", Value: oid},
		{Key: "tuuid", Value: tuuid.String()},
		{Key: "bin", Value: primitive.Binary{Data: fmt.Appendf(nil, "\x00\x01blob%d-%d", id, v)}},
	}
	var nums bson.A
	for k := range int(id%4) + v {
		nums = append(nums, int32(k*k-int(id)))
	}
	tags := bson.A{}
	for k := range 3 - v%3 {
		tags = append(tags, fmt.Sprintf("t%d", (int(id)+k)%5))
	}
	counts := bson.D{}
	for k := range 1 + (int(id)+v)%3 {
		counts = append(counts, bson.E{Key: fmt.Sprintf("k%d", k), Value: int32(k + v)})
	}
	series := bson.D{{Key: "a", Value: nums}, {Key: fmt.Sprintf("s%d", v), Value: bson.A{int32(v), int32(v)}}}
	d = append(d, bson.E{Key: "nums", Value: nums}, bson.E{Key: "tags", Value: tags},
		bson.E{Key: "counts", Value: counts}, bson.E{Key: "series", Value: series})
	// The types without a BSON counterpart, from each input form they take.
	var clock, ip, dur any
	clockNs := ((id%24)*3600+int64(v)*61)*1e9 + id*1001 // under a day
	if v%2 == 0 {
		clock = fmt.Sprintf("%02d:%02d:%02d.%09d", clockNs/3600e9, clockNs/60e9%60, clockNs/1e9%60, clockNs%1e9)
	} else {
		clock = clockNs % (24 * 3600e9)
	}
	switch id % 3 {
	case 0:
		ip = fmt.Sprintf("10.%d.%d.1", id, v)
	case 1:
		ip = fmt.Sprintf("2001:db8::%x:%x", id, v)
	case 2:
		ip = primitive.Binary{Data: []byte{192, 168, byte(id), byte(v)}}
	}
	switch id % 3 {
	case 0:
		dur = fmt.Sprintf("%dmo%dd%dh%dns", v, id%30, id%24, id)
	case 1:
		dur = fmt.Sprintf("P%dYT%dS", v, id)
	case 2:
		dur = -id * 1e6
	}
	d = append(d, bson.E{Key: "tiny", Value: int32((id+int64(v))%256 - 128)},
		bson.E{Key: "day", Value: primitive.NewDateTimeFromTime(time.Date(1900+int(id%200), time.Month(1+v%12), 1+int(id%28), 0, 0, 0, 0, time.UTC))},
		bson.E{Key: "clock", Value: clock}, bson.E{Key: "ip", Value: ip}, bson.E{Key: "dur", Value: dur},
		bson.E{Key: "pair", Value: bson.A{int32(id), fmt.Sprintf("p%d", v), nums}},
		bson.E{Key: "emb", Value: bson.A{float64(id) / 8, float64(v), -1.5}},
		bson.E{Key: "tmap", Value: bson.D{{Key: "a", Value: bson.A{int32(v), "x"}}, {Key: fmt.Sprintf("t%d", v), Value: bson.A{int32(id), "y"}}}})
	if v%3 != 2 {
		d = append(d, bson.E{Key: "addr", Value: bson.D{{Key: "street", Value: fmt.Sprintf("%d rue %d", id, v)},
			{Key: "zip", Value: int32(75000 + v)}, {Key: "tags", Value: tags}}})
	}
	if id%5 == 0 && v > 0 {
		// A later state drops fields: the sink must write them as null.
		d = slices.DeleteFunc(d, func(e bson.E) bool {
			return e.Key == "tags" || e.Key == "i32" || e.Key == "note" || e.Key == "pair" || e.Key == "ip" || e.Key == "emb"
		})
		d = append(d, bson.E{Key: "counts", Value: nil})
	}
	return d
}

func dec128Int(b *big.Int) primitive.Decimal128 {
	d, ok := primitive.ParseDecimal128FromBigInt(b, 0)
	if !ok {
		panic(b)
	}
	return d
}

// TestIntegrationSinkTypeMatrixReplay writes a stream of inserts, updates
// that grow, shrink and drop fields, out-of-order versions and deletes of
// documents covering every replay-safe column type through the real sink
// into Cassandra; then replays the topic three times from the start (fresh
// groups) and once from the middle of every partition. After each replay
// every row, and the write time of every single-cell column, must be
// byte-identical to the first pass.
func TestIntegrationSinkTypeMatrixReplay(t *testing.T) {
	s := testbed.Cassandra(t)
	adm := testbed.KafkaAdmin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ks := testbed.UniqueName(t, "ks")
	testbed.CreateKeyspace(t, s, ks)
	for _, stmt := range strings.Split(fmt.Sprintf(matrixSchema, ks), ";") {
		if err := s.Query(stmt).Exec(); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	m, err := transform.Parse(fmt.Appendf(nil, matrixSpec, ks))
	if err != nil {
		t.Fatal(err)
	}
	if u := m.UnsafeColumns(); len(u) != 0 {
		t.Fatalf("the matrix has unsafe columns: %v", u[0])
	}
	prefix := testbed.UniqueName(t, "types")
	ns := "shop.matrix"
	topic := prefix + "." + ns
	testbed.CreateTopic(t, adm, topic, 3)

	const n = 120
	var evs []event
	for i := int64(0); i < n; i++ {
		evs = append(evs, event{envelope.OpBackfill, i, envelope.Below(envelope.Version{T: 1000}), matrixDoc(i, 0)})
		evs = append(evs, event{envelope.OpInsert, i, envelope.Version{T: 1000, I: uint32(i)}, matrixDoc(i, 0)})
		switch i % 4 {
		case 0:
			evs = append(evs, event{envelope.OpUpdate, i, envelope.Version{T: 2000, I: uint32(i)}, matrixDoc(i, 1)})
		case 1: // the newest state first, then an older one
			evs = append(evs, event{envelope.OpReplace, i, envelope.Version{T: 3000, I: uint32(i)}, matrixDoc(i, 3)})
			evs = append(evs, event{envelope.OpUpdate, i, envelope.Version{T: 2000, I: uint32(i)}, matrixDoc(i, 2)})
		case 2:
			evs = append(evs, event{envelope.OpDelete, i, envelope.Version{T: 2000, I: uint32(i)}, nil})
		case 3:
			evs = append(evs, event{envelope.OpUpdate, i, envelope.Version{T: 2000, I: uint32(i)}, matrixDoc(i, 2)})
			evs = append(evs, event{envelope.OpUpdate, i, envelope.Version{T: 2500, I: uint32(i)}, matrixDoc(i, 4)})
		}
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	produce(t, ctx, prod, topic, ns, evs)

	runUntilCaughtUp(t, m, s, prefix, int64(len(evs)), nil)
	first := matrixSnapshot(t, s, ks)
	if rows := bytes.Count(first, []byte("\n")); rows != n-n/4 {
		t.Fatalf("first pass: %d rows, want %d", rows, n-n/4)
	}
	for _, want := range [][]byte{[]byte(`"c_set_int": [`), []byte(`"c_udt_nf": {"street": `), []byte(`"c_map_fl": {"a": [`),
		[]byte(`"s_note": "note `), []byte(`"c_flist": [`), []byte(`"c_timeuuid": "`), []byte(`"c_tiny": -`),
		[]byte(`"c_date": "19`), []byte(`"c_time": "0`), []byte(`"c_inet": "2001:db8:`), []byte(`"c_inet": "192.168.`),
		[]byte(`"c_dur": "-`), []byte(`"c_dur": "1y`), []byte(`"c_tuple": [`), []byte(`"c_tuple": null`), []byte(`"c_vec": [`),
		[]byte(`"c_map_tup": {"a": [`)} {
		if !bytes.Contains(first, want) {
			t.Fatalf("first pass wrote no %s: the matrix does not exercise it; first rows:\n%.3000s", want, first)
		}
	}
	// Every row against the source pushed through the transform, read as
	// reconcile reads it (gocql's generic scan: tuples split, IPv4 in 16
	// bytes, nulls as zeros), by the checker that does not use reconcile.
	newest := map[int64]event{}
	for _, e := range evs {
		if cur, ok := newest[e.id]; !ok || e.ver.Compare(cur.ver) > 0 {
			newest[e.id] = e
		}
	}
	var final []bson.Raw
	for _, e := range newest {
		if e.op == envelope.OpDelete {
			continue
		}
		b, err := bson.Marshal(e.doc)
		if err != nil {
			t.Fatal(err)
		}
		final = append(final, b)
	}
	if len(final) != n-n/4 {
		t.Fatalf("%d documents survive, want %d", len(final), n-n/4)
	}
	// The static column holds the newest note of each partition, not each
	// document's: it is left out here (the replays below cover it).
	perDoc, err := transform.Parse(fmt.Appendf(nil, strings.Replace(matrixSpec,
		"          - {name: s_note, type: text, from: note}\n", "", 1), ks))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := testbed.Snapshot(t, s, perDoc, ns), testbed.Expected(t, perDoc, ns, final); !bytes.Equal(got, want) {
		t.Fatalf("first pass: Cassandra differs from the source; first difference:\n got %q\nwant %q",
			testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
	}
	check := func(pass string) {
		t.Helper()
		if got := matrixSnapshot(t, s, ks); !bytes.Equal(got, first) {
			t.Fatalf("%s: Cassandra differs from the first pass; first difference:\n got %q\nwant %q",
				pass, testbed.FirstDiff(got, first), testbed.FirstDiff(first, got))
		}
	}
	for pass := 1; pass <= 3; pass++ {
		runUntilCaughtUp(t, m, s, prefix, int64(len(evs)), nil)
		check(fmt.Sprintf("replay %d from the start", pass))
	}
	// From the middle: a new group whose committed offsets are half of each
	// partition's end (a group without members takes an admin commit).
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	group := testbed.UniqueName(t, "g")
	mid := kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		mid.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset / 2, LeaderEpoch: -1})
	})
	if err := adm.CommitAllOffsets(ctx, group, mid); err != nil {
		t.Fatal(err)
	}
	runUntilCaughtUpGroup(t, m, s, prefix, group, checkpointstest.New(), int64(len(evs)), nil)
	check("replay from the middle")
}

// matrixSnapshot is every row as Cassandra's JSON, with the write time of
// every single-cell column, sorted.
func matrixSnapshot(t *testing.T, s *gocql.Session, ks string) []byte {
	t.Helper()
	cells := []string{"s_note", "c_text", "c_ascii", "c_varchar", "c_int", "c_bigint", "c_smallint", "c_varint",
		"c_decimal", "c_float", "c_double", "c_bool", "c_ts", "c_uuid", "c_timeuuid", "c_blob", "c_json",
		"c_flist", "c_fset", "c_fmap", "c_udt", "c_tiny", "c_date", "c_time", "c_inet", "c_dur", "c_tuple", "c_vec"}
	cols := append([]string{"bucket", "id"}, cells...)
	cols = append(cols, "c_set", "c_set_int", "c_map", "c_map_fl", "c_udt_nf", "c_map_tup")
	for _, c := range cells {
		cols = append(cols, "WRITETIME("+c+") AS wt_"+c)
	}
	iter := s.Query(fmt.Sprintf("SELECT JSON %s FROM %s.matrix", strings.Join(cols, ", "), ks)).Iter()
	var rows []string
	var js string
	for iter.Scan(&js) {
		rows = append(rows, js)
	}
	if err := iter.Close(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(rows)
	var b bytes.Buffer
	for _, r := range rows {
		b.WriteString(r)
		b.WriteByte('\n')
	}
	return b.Bytes()
}
