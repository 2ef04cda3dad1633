package capture

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/mongoid"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// Backfill pages through a collection in _id order across every BSON type
// bracket an _id can have: see package mongoid for why {_id: {$gt: last}} is
// not enough and how each page's filter is built.

// scanner reads a collection for a backfill whose version is below t0. On a
// server with sessions the reads run in a causally consistent session whose
// operation time is t0, so readConcern majority waits until the node has
// applied everything up to t0 (afterClusterTime): a lagging node can never
// return a state older than the backfill's version claims.
type scanner struct {
	col  *mongo.Collection
	sess mongo.Session
	rare bool
	// cur is the open cursor of the scan and curLast the key of the last
	// document it returned: the next page reads on from it rather than
	// asking again. A server that answers {_id: {$gt: last}} by filtering
	// and sorting the collection (the stand-in does) pays that once per scan
	// instead of once per chunk; a real mongod saves a query plan and a round
	// trip per chunk.
	cur     *mongo.Cursor
	curLast []byte
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
	s.rare = mongoid.AcceptsRare(ctx, s.col)
	return s, nil
}

func (s *scanner) close() {
	s.closeCursor()
	if s.sess != nil {
		s.sess.EndSession(context.Background())
	}
}

func (s *scanner) closeCursor() {
	if s.cur != nil {
		s.cur.Close(context.Background())
		s.cur, s.curLast = nil, nil
	}
}

// page reads up to n documents after last, appending to docs. It reads on
// from the scan's open cursor when that cursor stopped at last; any other
// last (the first page, a resume after a restart or an error) opens a new
// one with the cross-bracket filter of package mongoid. On an error it
// returns what it read so far, so the caller can resume after the last one.
func (s *scanner) page(ctx context.Context, last *bson.RawValue, n int, docs []bson.Raw) ([]bson.Raw, error) {
	if s.sess != nil {
		ctx = mongo.NewSessionContext(ctx, s.sess)
	}
	if s.cur == nil || last == nil || !bytes.Equal(s.curLast, envelope.Key(*last)) {
		s.closeCursor()
		cur, err := s.col.Find(ctx, mongoid.After(last, s.rare), options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).
			SetHint(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(int32(min(n, 10_000))))
		if err != nil {
			return docs, err
		}
		s.cur = cur
	}
	read := 0
	for read < n && s.cur.Next(ctx) {
		docs = append(docs, append(bson.Raw(nil), s.cur.Current...))
		read++
	}
	if err := s.cur.Err(); err != nil {
		// A killed cursor (an election; getMore is not retryable): the
		// caller resumes after the last document with a new one.
		s.closeCursor()
		return docs, err
	}
	if read < n {
		s.closeCursor() // exhausted
		return docs, nil
	}
	s.curLast = envelope.Key(docs[len(docs)-1].Lookup("_id"))
	return docs, nil
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
