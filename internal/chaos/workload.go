package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
)

// Op kinds the workload sends.
const (
	OpInsert  = "insert"
	OpReplace = "replace"
	OpSet     = "update-set"
	OpUnset   = "update-unset"
	OpDelete  = "delete"
)

// Op is one write to one of the two collections.
type Op struct {
	Kind string
	// Profiles is true for the profiles collection, false for orders.
	Profiles bool
	ID       any
	// Doc is the whole document for inserts and replaces; Update the
	// update document for updates.
	Doc, Update bson.D
}

// Gen makes documents and operations from a seeded source, so a seed
// reproduces the workload's choices (not their timing).
type Gen struct {
	r    *rand.Rand
	ids  [2][]any
	at   [2]map[any]int
	next int
}

// NewGen starts a generator; the same seed gives the same sequence.
func NewGen(seed uint64) *Gen {
	return &Gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), at: [2]map[any]int{{}, {}}}
}

var (
	cities    = []string{"Oslo", "Lima", "Pune", "Kyiv", "Quito", "Accra"}
	tagWords  = []string{"gift", "rush", "fragile", "bulk", "promo", "returned", "vip"}
	firsts    = []string{"Ada", "Alan", "Grace", "Edsger", "Barbara", "Ken"}
	statuses  = []string{"new", "paid", "shipped", "done"}
	customers = 40
)

func (g *Gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

func (g *Gen) customer() string { return fmt.Sprintf("Cust-%02d", g.r.IntN(customers)) }

// words is 0..n distinct-or-not words: sets deduplicate, and an empty
// array (null in Cassandra) is a case worth sending.
func (g *Gen) words(n int) bson.A {
	a := bson.A{}
	for i := g.r.IntN(n + 1); i > 0; i-- {
		a = append(a, g.pick(tagWords))
	}
	return a
}

func (g *Gen) ints(n, max int) bson.A {
	a := bson.A{}
	for i := g.r.IntN(n + 1); i > 0; i-- {
		a = append(a, int32(g.r.IntN(max)))
	}
	return a
}

// Order is a full orders document with id.
func (g *Gen) Order(id any) bson.D {
	items := bson.A{}
	for i := g.r.IntN(4); i >= 0; i-- {
		items = append(items, bson.D{{Key: "sku", Value: fmt.Sprintf("S%03d", g.r.IntN(500))},
			{Key: "qty", Value: int32(1 + g.r.IntN(5))}, {Key: "price", Value: float64(g.r.IntN(10000)) / 100},
			{Key: "opts", Value: g.words(2)}})
	}
	d := bson.D{{Key: "_id", Value: id}, {Key: "customer", Value: g.customer()},
		{Key: "status", Value: g.pick(statuses)}, {Key: "total", Value: float64(g.r.IntN(100000)) / 100},
		{Key: "tags", Value: g.words(3)}, {Key: "qty", Value: g.ints(4, 9)}, {Key: "items", Value: items},
		{Key: "ship", Value: bson.D{{Key: "street", Value: fmt.Sprintf("%d Main St", g.r.IntN(999))},
			{Key: "city", Value: g.pick(cities)}, {Key: "zip", Value: fmt.Sprintf("%05d", g.r.IntN(99999))}}},
		{Key: "attrs", Value: bson.D{{Key: "channel", Value: g.pick([]string{"web", "app", "phone"})},
			{Key: "lang", Value: g.pick([]string{"en", "es", "uk"})}}},
		{Key: "placed", Value: primitive.NewDateTimeFromTime(time.UnixMilli(1_700_000_000_000 + g.r.Int64N(1e10)))}}
	if g.r.IntN(2) == 0 {
		d = append(d, bson.E{Key: "note", Value: "leave at the door " + g.pick(tagWords)})
	}
	return d
}

// Profile is a full profiles document with id.
func (g *Gen) Profile(id any) bson.D {
	scores := bson.D{}
	for _, k := range []string{"math", "art", "music"}[:g.r.IntN(4)] {
		scores = append(scores, bson.E{Key: k, Value: g.ints(3, 100)})
	}
	d := bson.D{{Key: "_id", Value: id},
		{Key: "name", Value: bson.D{{Key: "first", Value: g.pick(firsts)}, {Key: "last", Value: fmt.Sprintf("L%d", g.r.IntN(1000))}}},
		{Key: "age", Value: int32(18 + g.r.IntN(70))},
		{Key: "emails", Value: bson.A{fmt.Sprintf("%v@example.org", id), fmt.Sprintf("alt%d@example.org", g.r.IntN(100))}},
		{Key: "flags", Value: g.ints(4, 16)}, {Key: "scores", Value: scores},
		{Key: "home", Value: bson.D{{Key: "street", Value: fmt.Sprintf("%d Elm Rd", g.r.IntN(999))}, {Key: "city", Value: g.pick(cities)}}},
		{Key: "prefs", Value: bson.D{{Key: "theme", Value: g.pick([]string{"dark", "light"})}}},
		{Key: "meta", Value: bson.D{{Key: "source", Value: "legacy"}, {Key: "history", Value: g.words(3)},
			{Key: "nested", Value: bson.D{{Key: "level", Value: int32(g.r.IntN(5))}}}}}}
	return d
}

// NewID makes a fresh _id for a collection and remembers it as live.
func (g *Gen) NewID(profiles bool) any {
	var id any
	if profiles {
		g.next++
		id = fmt.Sprintf("p%06d", g.next)
	} else {
		var oid primitive.ObjectID
		for i := range oid {
			oid[i] = byte(g.r.IntN(256))
		}
		id = oid
	}
	c := coll(profiles)
	g.at[c][id] = len(g.ids[c])
	g.ids[c] = append(g.ids[c], id)
	return id
}

func coll(profiles bool) int {
	if profiles {
		return 1
	}
	return 0
}

// IDs returns up to n live _ids of a collection, chosen at random.
func (g *Gen) IDs(profiles bool, n int) []any {
	ids := g.ids[coll(profiles)]
	var out []any
	for _, i := range g.r.Perm(len(ids)) {
		if len(out) == n {
			break
		}
		out = append(out, ids[i])
	}
	return out
}

func (g *Gen) forget(profiles bool, id any) {
	c := coll(profiles)
	i := g.at[c][id]
	last := g.ids[c][len(g.ids[c])-1]
	g.ids[c][i], g.at[c][last] = last, i
	g.ids[c] = g.ids[c][:len(g.ids[c])-1]
	delete(g.at[c], id)
}

// Next is the next live operation: inserts 25 %, replaces 20 %, $set
// updates 25 % (nested fields, and the customer that keys
// orders_by_customer), field-removing $unset updates 15 %, deletes 15 %.
func (g *Gen) Next() Op {
	profiles := g.r.IntN(2) == 1
	c := coll(profiles)
	p := g.r.IntN(100)
	if p < 25 || len(g.ids[c]) < 10 {
		id := g.NewID(profiles)
		return Op{Kind: OpInsert, Profiles: profiles, ID: id, Doc: g.doc(profiles, id)}
	}
	id := g.ids[c][g.r.IntN(len(g.ids[c]))]
	switch {
	case p < 45:
		return Op{Kind: OpReplace, Profiles: profiles, ID: id, Doc: g.doc(profiles, id)}
	case p < 70:
		return Op{Kind: OpSet, Profiles: profiles, ID: id, Update: bson.D{{Key: "$set", Value: g.set(profiles)}}}
	case p < 85:
		return Op{Kind: OpUnset, Profiles: profiles, ID: id, Update: bson.D{{Key: "$unset", Value: g.unset(profiles)}}}
	default:
		g.forget(profiles, id)
		return Op{Kind: OpDelete, Profiles: profiles, ID: id}
	}
}

func (g *Gen) doc(profiles bool, id any) bson.D {
	if profiles {
		return g.Profile(id)
	}
	return g.Order(id)
}

func (g *Gen) set(profiles bool) bson.D {
	if profiles {
		return []bson.D{
			{{Key: "age", Value: int32(18 + g.r.IntN(70))}},
			{{Key: "name.last", Value: fmt.Sprintf("M%d", g.r.IntN(1000))}},
			{{Key: "scores.math", Value: g.ints(3, 100)}, {Key: "flags", Value: g.ints(4, 16)}},
			{{Key: "home.city", Value: g.pick(cities)}, {Key: "meta.nested.level", Value: int32(g.r.IntN(5))}},
		}[g.r.IntN(4)]
	}
	return []bson.D{
		{{Key: "status", Value: g.pick(statuses)}, {Key: "total", Value: float64(g.r.IntN(100000)) / 100}},
		{{Key: "customer", Value: g.customer()}},
		{{Key: "ship.city", Value: g.pick(cities)}, {Key: "attrs.gift", Value: "yes"}},
		{{Key: "tags", Value: g.words(3)}, {Key: "qty", Value: g.ints(4, 9)}},
	}[g.r.IntN(4)]
}

func (g *Gen) unset(profiles bool) bson.D {
	if profiles {
		return []bson.D{
			{{Key: "emails", Value: ""}},
			{{Key: "home", Value: ""}, {Key: "prefs.theme", Value: ""}},
			{{Key: "meta.history", Value: ""}, {Key: "scores", Value: ""}},
			{{Key: "age", Value: ""}, {Key: "name.first", Value: ""}},
		}[g.r.IntN(4)]
	}
	return []bson.D{
		{{Key: "note", Value: ""}},
		{{Key: "customer", Value: ""}},
		{{Key: "ship.zip", Value: ""}, {Key: "attrs.lang", Value: ""}},
		{{Key: "tags", Value: ""}, {Key: "items", Value: ""}, {Key: "status", Value: ""}},
	}[g.r.IntN(4)]
}

// Apply sends op to its collection.
func Apply(ctx context.Context, orders, profiles *mongo.Collection, op Op) error {
	c := orders
	if op.Profiles {
		c = profiles
	}
	filter := bson.D{{Key: "_id", Value: op.ID}}
	var err error
	switch op.Kind {
	case OpInsert:
		_, err = c.InsertOne(ctx, op.Doc)
	case OpReplace:
		_, err = c.ReplaceOne(ctx, filter, op.Doc)
	case OpSet, OpUnset:
		_, err = c.UpdateOne(ctx, filter, op.Update)
	case OpDelete:
		_, err = c.DeleteOne(ctx, filter)
	}
	if err != nil {
		return fmt.Errorf("%s %v: %w", op.Kind, op.ID, err)
	}
	return nil
}

// Workload writes Next operations at a steady rate until stopped.
type Workload struct {
	Gen              *Gen
	Orders, Profiles *mongo.Collection
	// Rate is operations per second; Max bounds the total.
	Rate float64
	Max  int
	// Writers send operations concurrently (default 1), so one slow
	// write does not hold the rate down. Two writers may reorder two
	// operations on one document; the checker reads the source's final
	// state, so that only adds interleavings.
	Writers int

	mu     sync.Mutex // guards Gen and the counters
	counts map[string]int
	errs   int
	last   error
}

// Run writes until stop ends or Max operations were sent. Operations run
// under ctx, not stop: cancelling one in flight would not undo it on the
// server, which may still apply it after Run returned, after the checker
// read the source (a run lost a document's row that way: the insert landed
// after the source was read). So stop only ends the ticks, and Run returns
// once every operation it started has been answered.
func (w *Workload) Run(ctx, stop context.Context) {
	w.mu.Lock()
	w.counts = map[string]int{}
	w.mu.Unlock()
	ticks := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < max(1, w.Writers); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, ok := <-ticks; !ok {
					return
				}
				w.mu.Lock()
				op := w.Gen.Next()
				w.mu.Unlock()
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := Apply(octx, w.Orders, w.Profiles, op)
				cancel()
				w.mu.Lock()
				if err != nil && ctx.Err() == nil {
					w.errs++
					w.last = err
				} else if err == nil {
					w.counts[op.Kind]++
				}
				w.mu.Unlock()
			}
		}()
	}
	defer wg.Wait()
	defer close(ticks)
	t := time.NewTicker(time.Duration(float64(time.Second) / w.Rate))
	defer t.Stop()
	for n := 0; n < w.Max; n++ {
		select {
		case <-stop.Done():
			return
		case <-t.C:
		}
		// A tick no writer is free for is dropped, not queued: the rate
		// is an upper bound.
		select {
		case ticks <- struct{}{}:
		default:
		}
	}
}

// Counts is how many operations of each kind succeeded, the number that
// failed and the last failure.
func (w *Workload) Counts() (map[string]int, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.counts))
	for k, v := range w.counts {
		out[k] = v
	}
	return out, w.errs, w.last
}
