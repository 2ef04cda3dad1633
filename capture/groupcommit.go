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
// the transaction committed (see run). Batches are queued in stream order
// and a group is a prefix of what is left, so the resume token stored never
// names an event whose records are not in Kafka.
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
	// inflight counts groups taken whose commit or checkpoint has not
	// ended: at most two, one committing and one checkpointing (guarded
	// by mu).
	inflight int
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

// run commits queued groups until ctx ends, close is called, or a commit
// or checkpoint fails, and records why it stopped, so that no reader waits
// for it.
//
// A group's checkpoint is written while the next group commits: the
// checkpoint only has to follow its own commit, and writing it (a Kafka
// round trip, or two fsyncs in the file store) between two transactions
// held up every one. Checkpoints are still written one at a time and in
// order. If one fails, the stream ends; records of the group committing
// meanwhile are in Kafka without a checkpoint and are produced again after
// the restart, which version-stamped writes make harmless.
func (g *committer) run(ctx context.Context) {
	defer close(g.exited)
	var ckpt chan error // the checkpoint write in flight, if any
	defer func() {
		if ckpt != nil {
			<-ckpt
		}
	}()
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
		err := g.c.commit(ctx, g.txn, b.recs, b.dead)
		if err == nil && ckpt != nil {
			err = <-ckpt
			ckpt = nil
		}
		if err != nil {
			g.finish(nil, err)
			return
		}
		ckpt = make(chan error, 1)
		go func(st streamState, done chan<- error) {
			err := checkpoints.PutJSON(ctx, g.c.store, streamKey(g.ns), st)
			g.finish(&st, err)
			done <- err
		}(b.state, ckpt)
	}
}

// take removes the queued group and counts it as in flight.
func (g *committer) take() (txnBatch, bool) {
	g.mu.Lock()
	b, ok := g.queue, g.queued
	g.queue, g.queued = txnBatch{}, false
	if ok {
		g.inflight++
	}
	g.mu.Unlock()
	signal(g.changed)
	return b, ok
}

// finish records the end of a group taken: checkpointed at st, or failed.
func (g *committer) finish(st *streamState, err error) {
	g.mu.Lock()
	g.inflight--
	switch {
	case err != nil:
		if g.err == nil {
			g.err = err
		}
	default:
		g.committed = st
		g.c.m.producedTime.WithLabelValues(g.ns).Set(float64(st.T))
		g.c.m.checkpointTS.WithLabelValues(g.ns).Set(float64(st.Time.Unix()))
	}
	g.mu.Unlock()
	signal(g.changed)
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

// waitTaken waits until the loop has taken everything queued (it may still
// be committing it), or the loop's error.
func (g *committer) waitTaken(ctx context.Context) error {
	return g.waitFor(ctx, func() bool { return !g.queued })
}

// settle waits until every queued group is committed, or the loop failed,
// and returns the newest checkpoint written since the last call (nil if
// none). It does not give up when ctx ends: the loop does, and reports it.
func (g *committer) settle() (*streamState, error) {
	err := g.waitFor(context.Background(), func() bool { return !g.queued && g.inflight == 0 })
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
