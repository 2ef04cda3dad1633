package reconcile

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/mongoid"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// source reads one MongoDB collection.
type source struct {
	mc   *mongo.Client
	ns   string
	coll *mongo.Collection
	// rare: the server knows the rare $type aliases (asked once).
	rareOnce sync.Once
	rare     bool
}

func newSource(mc *mongo.Client, ns string) (*source, error) {
	db, coll, ok := cutNamespace(ns)
	if !ok {
		return nil, fmt.Errorf("reconcile: namespace %q is not db.collection", ns)
	}
	return &source{mc: mc, ns: ns, coll: mc.Database(db).Collection(coll)}, nil
}

func cutNamespace(ns string) (string, string, bool) {
	for i := 0; i < len(ns); i++ {
		if ns[i] == '.' {
			return ns[:i], ns[i+1:], i > 0 && i < len(ns)-1
		}
	}
	return "", "", false
}

// scan calls fn for every document matching filter whose _id sorts after
// after (every one when after is empty), in _id order, so that a round can
// resume after the last _id it finished. The resume filter covers every later
// BSON type bracket (mongoid.After): a bare $gt would match only after's own
// type. doc is only valid during fn.
func (s *source) scan(ctx context.Context, filter bson.D, after bson.RawValue, fn func(doc bson.Raw) error) error {
	f := filter
	if f == nil {
		f = bson.D{}
	}
	if after.Type != 0 {
		f = mongoid.After(&after, s.acceptsRare(ctx))
		if len(filter) > 0 {
			f = bson.D{{Key: "$and", Value: bson.A{filter, f}}}
		}
	}
	cur, err := s.coll.Find(ctx, f, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(2000))
	if err != nil {
		return fmt.Errorf("reconcile: scan %s: %w", s.ns, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		if err := fn(cur.Current); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("reconcile: scan %s: %w", s.ns, err)
	}
	return nil
}

// acceptsRare asks the server once whether it knows the rare $type aliases.
func (s *source) acceptsRare(ctx context.Context) bool {
	s.rareOnce.Do(func() { s.rare = mongoid.AcceptsRare(ctx, s.coll) })
	return s.rare
}

// retryable reports errors worth another attempt: the connection dropped
// or timed out (a server pause, an election), not a refused query.
func retryable(err error) bool {
	return mongo.IsNetworkError(err) || mongo.IsTimeout(err)
}

// again runs fn up to three times while it fails with a retryable error.
func again[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	var v T
	var err error
	for attempt := range 3 {
		if v, err = fn(); err == nil || !retryable(err) || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(time.Duration(attempt+1) * 500 * time.Millisecond):
		}
	}
	return v, err
}

// find reads the documents with the given _ids, by envelope key. Point
// reads are retried on dropped connections: a re-check must not end a round.
func (s *source) find(ctx context.Context, ids []bson.RawValue) (map[string]bson.Raw, error) {
	return again(ctx, func() (map[string]bson.Raw, error) { return s.findOnce(ctx, ids) })
}

func (s *source) findOnce(ctx context.Context, ids []bson.RawValue) (map[string]bson.Raw, error) {
	out := map[string]bson.Raw{}
	if len(ids) == 0 {
		return out, nil
	}
	in := make(bson.A, len(ids))
	for i, id := range ids {
		in[i] = id
	}
	cur, err := s.coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: in}}}})
	if err != nil {
		return nil, fmt.Errorf("reconcile: read %s: %w", s.ns, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		doc := append(bson.Raw(nil), cur.Current...)
		out[string(envelope.Key(doc.Lookup("_id")))] = doc
	}
	return out, cur.Err()
}
