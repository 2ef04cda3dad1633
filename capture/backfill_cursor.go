package capture

import (
	"bytes"
	"context"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// cursorPager reads a backfill's chunks from one _id-ordered cursor kept open
// across chunks, instead of one query per chunk. A query per chunk costs the
// server a fresh plan, sort and seek (the stand-in filters and sorts the whole
// collection for each), and costs capture a round trip per chunk that no
// produce overlaps. A cursor opened once and drained with getMores reads at
// the source's scan speed.
//
// Correctness is the scanner's: the first open, and every reopen after a
// failed getMore (an election, a killed or timed-out cursor), asks for the
// documents after the last one returned with afterFilter, which pages across
// every BSON type bracket of _id. A single cursor sorted by _id crosses the
// brackets by itself. Chunks and checkpoints are unchanged: a restart resumes
// after the last checkpointed chunk.
type cursorPager struct {
	s   *scanner
	cur *mongo.Cursor
	// at is envelope.Key of the last _id the open cursor returned (nil: none
	// yet); a page asked for from anywhere else reopens the cursor.
	at   []byte
	done bool
	// batch is the getMore batch size.
	batch int32
}

var _ pager = (*cursorPager)(nil)

func newCursorPager(s *scanner, batch int) *cursorPager {
	return &cursorPager{s: s, batch: int32(min(max(batch, 1), 10_000))}
}

func (p *cursorPager) page(ctx context.Context, last *bson.RawValue, n int, docs []bson.Raw) ([]bson.Raw, error) {
	if p.s.sess != nil {
		ctx = mongo.NewSessionContext(ctx, p.s.sess)
	}
	var from []byte
	if last != nil {
		from = envelope.Key(*last)
	}
	if (p.cur != nil || p.done) && !bytes.Equal(from, p.at) {
		p.close()
		p.done = false
	}
	if p.done {
		return docs, nil // the cursor ended at from
	}
	if p.cur == nil {
		cur, err := p.s.col.Find(ctx, afterFilter(last, p.s.rare), options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).
			SetHint(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(p.batch))
		if err != nil {
			return docs, err
		}
		p.cur, p.at = cur, from
	}
	start := len(docs)
	defer func() {
		if len(docs) > start {
			p.at = envelope.Key(docs[len(docs)-1].Lookup("_id"))
		}
	}()
	for i := 0; i < n; i++ {
		if !p.cur.Next(ctx) {
			err := p.cur.Err()
			p.close()
			p.done = err == nil
			return docs, err
		}
		docs = append(docs, bson.Raw(append([]byte(nil), p.cur.Current...)))
	}
	return docs, nil
}

func (p *cursorPager) close() {
	if p.cur != nil {
		p.cur.Close(context.Background())
		p.cur = nil
	}
}
