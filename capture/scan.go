package capture

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// Backfill pages through a collection in _id order. {_id: {$gt: last}} is
// not enough: comparison operators only match values of the operand's BSON
// type bracket, while sort orders across brackets (MongoDB manual, "Comparison
// Query Operators" and "BSON Types / Comparison/Sort Order"). A collection whose
// _ids mix ObjectId, string and numbers would lose every document of the
// other brackets after the first chunk ending on one. Each page therefore asks
// for {$or: [{_id: {$gt: last}}, {_id: {$type: [every later bracket]}}]},
// sorted by _id. Index bounds (hint {_id: 1} with min) would do the same on a
// real server, but the mongo-java-server stand-in silently ignores min and
// would return the first page forever; the $or form is correct on both.

// brackets lists the $type aliases of each BSON comparison bracket in sort
// order. Arrays, regular expressions and undefined cannot be an _id and are
// left out. rare marks aliases some servers do not know (the stand-in rejects
// them with BadValue); they are only used when the server accepts them.
var brackets = []struct {
	aliases []string
	rare    []string
}{
	{aliases: []string{"minKey"}},
	{aliases: []string{"null"}},
	{aliases: []string{"double", "int", "long", "decimal"}},
	{aliases: []string{"string"}, rare: []string{"symbol"}},
	{aliases: []string{"object"}},
	{aliases: []string{"binData"}},
	{aliases: []string{"objectId"}},
	{aliases: []string{"bool"}},
	{aliases: []string{"date"}},
	{aliases: []string{"timestamp"}},
	{rare: []string{"dbPointer"}},
	{rare: []string{"javascript"}},
	{rare: []string{"javascriptWithScope"}},
	{aliases: []string{"maxKey"}},
}

// bracketOf is the index in brackets of a BSON type.
func bracketOf(t bsontype.Type) int {
	switch t {
	case bsontype.MinKey:
		return 0
	case bsontype.Null, bsontype.Undefined:
		return 1
	case bsontype.Double, bsontype.Int32, bsontype.Int64, bsontype.Decimal128:
		return 2
	case bsontype.String, bsontype.Symbol:
		return 3
	case bsontype.EmbeddedDocument, bsontype.Array:
		return 4
	case bsontype.Binary:
		return 5
	case bsontype.ObjectID:
		return 6
	case bsontype.Boolean:
		return 7
	case bsontype.DateTime:
		return 8
	case bsontype.Timestamp, bsontype.Regex:
		return 9
	case bsontype.DBPointer:
		return 10
	case bsontype.JavaScript:
		return 11
	case bsontype.CodeWithScope:
		return 12
	case bsontype.MaxKey:
		return 13
	}
	return 13
}

// afterFilter selects every _id that sorts after last; nil last selects all.
func afterFilter(last *bson.RawValue, rare bool) bson.D {
	if last == nil {
		return bson.D{}
	}
	gt := bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: *last}}}}
	if f, ok := last.DoubleOK(); ok && math.IsNaN(f) {
		// NaN sorts below every number but $gt: NaN matches nothing; every
		// other number is at least -Infinity.
		gt = bson.D{{Key: "_id", Value: bson.D{{Key: "$gte", Value: math.Inf(-1)}}}}
	}
	var later bson.A
	for _, b := range brackets[bracketOf(last.Type)+1:] {
		for _, a := range b.aliases {
			later = append(later, a)
		}
		if rare {
			for _, a := range b.rare {
				later = append(later, a)
			}
		}
	}
	if len(later) == 0 {
		return gt
	}
	return bson.D{{Key: "$or", Value: bson.A{gt, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: later}}}}}}}
}

// scanner reads a collection for a backfill whose version is below t0. On a
// server with sessions the reads run in a causally consistent session whose
// operation time is t0, so readConcern majority waits until the node has
// applied everything up to t0 (afterClusterTime): a lagging node can never
// return a state older than the backfill's version claims.
type scanner struct {
	col  *mongo.Collection
	sess mongo.Session
	rare bool
}

func (c *Capture) newScanner(ctx context.Context, col *mongo.Collection, t0 envelope.Version) (*scanner, error) {
	db, coll := col.Database().Name(), col.Name()
	s := &scanner{col: stampedDB(c.mongo, db).Collection(coll)}
	si, err := c.src.info(ctx)
	if err != nil {
		return nil, err
	}
	if si.Sessions {
		sess, err := c.mongo.StartSession(options.Session().SetCausalConsistency(true))
		if err != nil {
			return nil, fmt.Errorf("capture: start session: %w", err)
		}
		if err := sess.AdvanceOperationTime(&primitive.Timestamp{T: t0.T, I: t0.I}); err != nil {
			sess.EndSession(ctx)
			return nil, fmt.Errorf("capture: session at t0: %w", err)
		}
		s.sess = sess
	}
	// Servers that do not know an alias reject it with BadValue; such a
	// server cannot hold an _id of that type either.
	err = s.col.FindOne(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: "symbol"}}}}).Err()
	s.rare = err == nil || errors.Is(err, mongo.ErrNoDocuments)
	return s, nil
}

func (s *scanner) close() {
	if s.sess != nil {
		s.sess.EndSession(context.Background())
	}
}

// page reads up to n documents after last, appending to docs. On an error it
// returns what it read so far, so the caller can resume after the last one.
func (s *scanner) page(ctx context.Context, last *bson.RawValue, n int, docs []bson.Raw) ([]bson.Raw, error) {
	if s.sess != nil {
		ctx = mongo.NewSessionContext(ctx, s.sess)
	}
	cur, err := s.col.Find(ctx, afterFilter(last, s.rare), options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).
		SetHint(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(n)).SetBatchSize(int32(min(n, 10_000))))
	if err != nil {
		return docs, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		docs = append(docs, append(bson.Raw(nil), cur.Current...))
	}
	return docs, cur.Err()
}

// pager reads one page of a backfill scan; *scanner is the real one.
type pager interface {
	page(ctx context.Context, last *bson.RawValue, n int, docs []bson.Raw) ([]bson.Raw, error)
}

// readChunk reads the next chunk after last. A failed read (an election
// kills the cursor, and getMore is not retryable) resumes after the last
// document read, with backoff, until Backfill.Retries consecutive failures.
func (c *Capture) readChunk(ctx context.Context, ns string, s pager, last *bson.RawValue, n int) ([]bson.Raw, error) {
	var docs []bson.Raw
	backoff := c.cfg.Backfill.RetryBackoff
	for failures := 0; ; {
		from := last
		if len(docs) > 0 {
			id := docs[len(docs)-1].Lookup("_id")
			from = &id
		}
		var err error
		docs, err = s.page(ctx, from, n-len(docs), docs)
		if err == nil {
			return docs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		failures++
		c.m.backfillErrors.WithLabelValues(ns).Inc()
		if failures > c.cfg.Backfill.Retries {
			return nil, fmt.Errorf("capture %s: backfill scan failed %d times in a row: %w", ns, failures, err)
		}
		c.log.Warn("backfill scan failed; resuming the chunk after its last document", "namespace", ns,
			"err", err, "attempt", failures, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)/2+1))):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}
