// Command demo seeds the legacy `users` collection, drives a write workload,
// and checks that Cassandra equals the transform of the source. `make demo`
// (deploy/local/demo) runs it around a live tidemark daemon.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// db is the MongoDB database and Cassandra keyspace of the demo's users:
// its own, so that the demo never drops what a test is using.
var db = "app"

// ns is the demo's namespace.
func ns() string { return db + ".users" }

// fatal makes the testbed helpers usable outside a test.
type fatal struct{}

func (fatal) Helper()                   {}
func (fatal) Fatal(a ...any)            { fmt.Fprintln(os.Stderr, a...); os.Exit(1) }
func (fatal) Fatalf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...); os.Exit(1) }

func main() {
	mode := flag.String("mode", "", "seed | workload | verify | inject | narrate")
	addr := flag.String("addr", "127.0.0.1:7070", "narrate: the daemon's admin API (token from TIDEMARK_TOKEN)")
	out := flag.String("out", "demo-outcome.json", "narrate: where to write what happened")
	limit := flag.Duration("limit", 35*time.Minute, "narrate: give up after this long")
	n := flag.Int("docs", 100_000, "documents to seed")
	rate := flag.Int("rate", 500, "workload changes per second")
	dur := flag.Duration("for", 20*time.Second, "workload duration")
	spec := flag.String("spec", "examples/specs/users.yaml", "mapping spec")
	wait := flag.Duration("wait", 3*time.Minute, "verify: how long to wait for Cassandra to match")
	rows := flag.Int("rows", 5, "inject: how many Cassandra rows to corrupt")
	flag.StringVar(&db, "db", "app", "MongoDB database and Cassandra keyspace of the demo's users (deploy/local/demo: DEMO_DB)")
	flag.Parse()
	ctx := context.Background()
	mc, err := mongo.Connect(ctx, options.Client().ApplyURI(testbed.MongoURI()))
	if err != nil {
		fatal{}.Fatal(err)
	}
	coll := mc.Database(db).Collection("users")
	switch *mode {
	case "seed":
		seed(ctx, mc, coll, *n)
	case "workload":
		workload(ctx, coll, *n, *rate, *dur)
	case "narrate":
		narrate(ctx, coll, *addr, *out, *n, *rate, *rows, *limit)
	case "verify":
		verify(ctx, coll, *spec, *wait)
	case "inject":
		fmt.Printf("corrupted %s rows directly in Cassandra: %s\n", ns(), strings.Join(inject(*n, *rows), ", "))
	default:
		fatal{}.Fatalf("unknown -mode %q", *mode)
	}
}

func session() *gocql.Session {
	cl := gocql.NewCluster(testbed.CassandraHosts()...)
	cl.Consistency = gocql.One
	cl.Timeout = 30 * time.Second
	s, err := cl.CreateSession()
	if err != nil {
		fatal{}.Fatal("cassandra:", err)
	}
	return s
}

func user(rng *rand.Rand, id primitive.ObjectID, i int) bson.D {
	first := []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken"}[rng.IntN(8)]
	dec, _ := primitive.ParseDecimal128(fmt.Sprintf("%d.%02d", rng.IntN(10000), rng.IntN(100)))
	d := bson.D{{Key: "_id", Value: id}, {Key: "email", Value: fmt.Sprintf("%s.%d@Example.org", first, i)},
		{Key: "name", Value: bson.D{{Key: "first", Value: first}, {Key: "last", Value: fmt.Sprintf("N%d", i)}}},
		{Key: "age", Value: int32(18 + rng.IntN(70))}, {Key: "balance", Value: dec},
		{Key: "created", Value: primitive.NewDateTimeFromTime(time.Date(1960+rng.IntN(60), 1, 1, 0, 0, 0, 0, time.UTC))},
		{Key: "tags", Value: bson.A{"t" + fmt.Sprint(rng.IntN(5)), "t" + fmt.Sprint(rng.IntN(5))}},
		{Key: "score", Value: rng.Float64() * 100}}
	if i%3 == 0 {
		d = append(d, bson.E{Key: "address", Value: bson.D{{Key: "street", Value: fmt.Sprintf("%d Main St", i)}, {Key: "city", Value: "Springfield"}}})
	}
	if i%5 == 0 {
		d = append(d, bson.E{Key: "prefs", Value: bson.D{{Key: "lang", Value: "en"}, {Key: "theme", Value: "dark"}}})
	}
	if i%20_000 == 7 {
		d[3] = bson.E{Key: "age", Value: "forty-two"} // unconvertible on purpose: goes to the dead-letter topic
	}
	return d
}

func seed(ctx context.Context, mc *mongo.Client, coll *mongo.Collection, n int) {
	s := session()
	defer s.Close()
	s.Query("DROP KEYSPACE IF EXISTS " + db).Exec()
	cql, err := os.ReadFile("examples/specs/users.cql")
	if err != nil {
		fatal{}.Fatal(err)
	}
	// The schema names keyspace app; the demo's is db.
	text := strings.NewReplacer("EXISTS app ", "EXISTS "+db+" ", "app.", db+".").Replace(string(cql))
	for _, stmt := range strings.Split(text, ";") {
		var lines []string
		for _, l := range strings.Split(stmt, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "--") {
				lines = append(lines, l)
			}
		}
		if q := strings.TrimSpace(strings.Join(lines, "\n")); q != "" {
			if err := s.Query(q).Exec(); err != nil {
				fatal{}.Fatalf("%s: %v", q, err)
			}
		}
	}
	mc.Database(db).Drop(ctx)
	rng := rand.New(rand.NewPCG(7, 7))
	batch := make([]any, 0, 2000)
	for i := 0; i < n; i++ {
		batch = append(batch, user(rng, seededID(i), i))
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := coll.InsertMany(ctx, batch); err != nil {
				fatal{}.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	fmt.Printf("seeded %d users into %s.users (a few deliberately unconvertible) and created the Cassandra schema\n", n, db)
}

func workload(ctx context.Context, coll *mongo.Collection, n, rate int, d time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	end := time.Now().Add(d)
	var done int
	var failing time.Time // since when every change failed
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			fmt.Printf("workload: %d changes\n", done)
			return
		case <-tick.C:
		}
		i := rng.IntN(n)
		if reserved(i) {
			continue // left alone so that an injected divergence stays until repaired
		}
		id := seededID(i)
		var err error
		switch rng.IntN(10) {
		case 0:
			_, err = coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		case 1:
			_, err = coll.InsertOne(ctx, user(rng, primitive.NewObjectID(), n+done))
		default:
			_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{
				{Key: "email", Value: fmt.Sprintf("changed.%d@example.org", done)}, {Key: "age", Value: int32(rng.IntN(90))}}}})
		}
		if err != nil && ctx.Err() == nil {
			// A shared, busy stand-in drops a connection now and then; the
			// driver reconnects. Only a source that stays unreachable ends
			// the demo.
			if failing.IsZero() {
				failing = time.Now()
				fmt.Fprintf(os.Stderr, "workload: %v (retrying)\n", err)
			}
			if time.Since(failing) > time.Minute {
				fatal{}.Fatalf("workload: MongoDB failed every change for a minute: %v", err)
			}
			continue
		}
		failing = time.Time{}
		done++
	}
	fmt.Printf("workload: %d changes in %s\n", done, d)
}

func verify(ctx context.Context, coll *mongo.Collection, specPath string, wait time.Duration) {
	m, err := transform.Load(specPath)
	if err != nil {
		fatal{}.Fatal(err)
	}
	s := session()
	defer s.Close()
	var docs []bson.Raw
	skipped := 0
	for _, d := range testbed.SourceDocs(fatal{}, ctx, coll) {
		if _, err := m.Apply(ns(), d); err != nil {
			skipped++ // dead-lettered by the sink, by design
			continue
		}
		docs = append(docs, d)
	}
	want := testbed.Expected(fatal{}, m, ns(), docs)
	deadline := time.Now().Add(wait)
	for {
		got := testbed.Snapshot(fatal{}, s, m, ns())
		if bytes.Equal(got, want) {
			fmt.Printf("verified: Cassandra equals the transform of %d source documents (%d rows); %d unconvertible documents are in the dead-letter topic\n",
				len(docs), bytes.Count(want, []byte{'\n'})+1, skipped)
			return
		}
		if time.Now().After(deadline) {
			fatal{}.Fatalf("DIVERGENCE: first differing row %q", testbed.FirstDiff(got, want))
		}
		time.Sleep(time.Second)
	}
}

// seededID is the _id of the i-th seeded document, the same in every process
// (NewObjectIDFromTimestamp would add random bytes): the workload and the
// injection must name documents the seed wrote.
func seededID(i int) primitive.ObjectID {
	var id primitive.ObjectID
	binary.BigEndian.PutUint32(id[0:4], uint32(1600000000+i))
	binary.BigEndian.PutUint32(id[8:12], uint32(i))
	return id
}

// reserved documents are never touched by the workload: the demo corrupts
// their rows, and a live update would heal them before reconcile looks.
func reserved(i int) bool { return i%1000 == 999 }

// inject corrupts rows behind tidemark's back, as a stray writer would: one
// column of each of up to n reserved documents' rows (those the current slice
// has written) gets another value, written now. Reconcile must find exactly
// these keys, and a repair (a re-emission whose source version is taken
// after this write) must undo it.
func inject(docs, n int) []string {
	s := session()
	defer s.Close()
	var ids []string
	for i := 999; i < docs && len(ids) < n; i += 1000 {
		id := seededID(i).Hex()
		var age int
		if err := s.Query("SELECT age FROM "+db+".users WHERE id = ?", id).Scan(&age); err != nil {
			continue // not in the slice yet, or unconvertible
		}
		if err := s.Query("UPDATE "+db+".users USING TIMESTAMP ? SET age = ? WHERE id = ?", time.Now().UnixMicro(), -1, id).Exec(); err != nil {
			fatal{}.Fatal("inject:", err)
		}
		ids = append(ids, id)
	}
	return ids
}
