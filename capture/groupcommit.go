package capture

import (
	"context"
	"errors"
	"sync"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/twmb/franz-go/pkg/kgo"
)

// errCommitterStopped is what a committer that was stopped reports to a
// reader still waiting on it; the stream is ending anyway.
var errCommitterStopped = errors.New("capture: transaction committer stopped")

// txnBatch is what one or more flushes of a stream ask to be committed:
// records, dead letters, and the checkpoint that becomes true once they are
// in Kafka.
type txnBatch struct {
	recs, dead []*kgo.Record
	state      streamState
}

func (b *txnBatch) size() int { return len(b.recs) + len(b.dead) }

// committer is a stream's group commit. The reader queues each flushed batch
// and goes on reading; one goroutine commits what is queued, one Kafka
// transaction at a time, and everything queued while a transaction commits
// goes into the next one, up to maxRecords (the reader waits beyond that).
// Under load a transaction therefore holds what arrived during the previous
// commit, so Kafka's three round trips per transaction (AddPartitionsToTxn,
// Produce, EndTxn) are paid per group, not per server batch; when Kafka is
// quick, or the stream quiet, a batch commits at once, as it would alone.
//
// The checkpoint of a group is the state of its last batch, written after
// the transaction committed and before the next transaction begins. Batches
// are queued in stream order and a group is a prefix of what is left, so the
// resume token stored never names an event whose records are not in Kafka.
type committer struct {
	c          *Capture
	ns         string
	txn        *kgo.Client
	maxRecords int

	// kick wakes the loop when a batch was queued; changed wakes a reader
	// waiting for the queue to be taken or a transaction to end. Both hold
	// at most one signal: the waiter re-reads the state under mu.
	kick, changed chan struct{}
	stop          chan struct{}
	exited        chan struct{}

	mu sync.Mutex
	// queue is what was flushed and not yet taken by the loop (guarded by mu).
	queue  txnBatch
	queued bool
	// busy is true while the loop commits a group (guarded by mu).
	busy bool
	// committed is the newest checkpoint written, until the reader takes it
	// (guarded by mu).
	committed *streamState
	// err is the first failed commit or checkpoint; the loop has stopped
	// after it (guarded by mu).
	err error
	// stopped is why the loop ended without a failed commit: ctx ended or
	// close was called (guarded by mu).
	stopped error
}

func newCommitter(c *Capture, ns string, txn *kgo.Client, maxRecords int) *committer {
	return &committer{c: c, ns: ns, txn: txn, maxRecords: maxRecords,
		kick: make(chan struct{}, 1), changed: make(chan struct{}, 1),
		stop: make(chan struct{}), exited: make(chan struct{})}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run commits queued groups until ctx ends, Close is called, or a commit
// fails. It records why it stopped in err, so that no reader waits for it.
func (g *committer) run(ctx context.Context) {
	defer close(g.exited)
	for {
		select {
		case <-ctx.Done():
			g.halt(ctx.Err())
			return
		case <-g.stop:
			g.halt(errCommitterStopped)
			return
		case <-g.kick:
		}
		b, ok := g.take()
		if !ok {
			continue
		}
		err := g.commit(ctx, b)
		g.mu.Lock()
		g.busy = false
		if err != nil {
			g.err = err
		} else {
			st := b.state
			g.committed = &st
			g.c.m.producedTime.WithLabelValues(g.ns).Set(float64(st.T))
			g.c.m.checkpointTS.WithLabelValues(g.ns).Set(float64(st.Time.Unix()))
		}
		g.mu.Unlock()
		signal(g.changed)
		if err != nil {
			return
		}
	}
}

// take removes the queued group and marks the loop busy with it.
func (g *committer) take() (txnBatch, bool) {
	g.mu.Lock()
	b, ok := g.queue, g.queued
	g.queue, g.queued = txnBatch{}, false
	g.busy = ok
	g.mu.Unlock()
	signal(g.changed)
	return b, ok
}

// commit produces one group in a Kafka transaction, then checkpoints it.
func (g *committer) commit(ctx context.Context, b txnBatch) error {
	if err := g.c.commit(ctx, g.txn, b.recs, b.dead); err != nil {
		return err
	}
	return checkpoints.PutJSON(ctx, g.c.store, streamKey(g.ns), b.state)
}

func (g *committer) halt(err error) {
	g.mu.Lock()
	g.stopped = err
	g.mu.Unlock()
	signal(g.changed)
}

// enqueue adds b to the next group. It returns once the queue is below
// maxRecords again (at once, unless the loop is behind), or with the error
// that stopped the loop.
func (g *committer) enqueue(ctx context.Context, b txnBatch) error {
	g.mu.Lock()
	if err := errors.Join(g.err, g.stopped); err != nil {
		g.mu.Unlock()
		return err
	}
	g.queue.recs = append(g.queue.recs, b.recs...)
	g.queue.dead = append(g.queue.dead, b.dead...)
	g.queue.state, g.queued = b.state, true
	g.mu.Unlock()
	signal(g.kick)
	return g.waitFor(ctx, func() bool { return !g.queued || g.queue.size() < g.maxRecords })
}

// settle waits until every queued group is committed, or the loop failed,
// and returns the newest checkpoint written since the last call (nil if
// none). It does not give up when ctx ends: the loop does, and reports it.
func (g *committer) settle() (*streamState, error) {
	err := g.waitFor(context.Background(), func() bool { return !g.queued && !g.busy })
	g.mu.Lock()
	st := g.committed
	g.committed = nil
	g.mu.Unlock()
	return st, err
}

// waitFor waits until done (read under mu). A failed commit is returned
// even when done: its records are not in Kafka. A loop that stopped
// otherwise is returned only if done is still false, as it never will be.
func (g *committer) waitFor(ctx context.Context, done func() bool) error {
	for {
		g.mu.Lock()
		ok, err, stopped := done(), g.err, g.stopped
		g.mu.Unlock()
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		case stopped != nil:
			return stopped
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.changed:
		}
	}
}

// close stops the loop and waits for it; a group it is committing finishes
// first (or ends with ctx), so the transactional client is idle after it.
func (g *committer) close() {
	close(g.stop)
	<-g.exited
}
