package capture

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// fenceCommits makes the rig's Kafka answer a transaction's commit with
// PRODUCER_FENCED, as a broker does for a transaction it aborted on its
// timeout while it could not answer: once, or every time; after delay, so
// that the reader can meet the end of its stream first.
func fenceCommits(r *replayRig, always bool, delay time.Duration) {
	r.kc.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		end := req.(*kmsg.EndTxnRequest)
		if !end.Commit {
			return nil, nil, false
		}
		if always {
			r.kc.KeepControl()
		}
		time.Sleep(delay)
		resp := end.ResponseKind().(*kmsg.EndTxnResponse)
		resp.Version = end.Version
		resp.ErrorCode = kerr.ProducerFenced.Code
		return resp, nil, true
	})
}

// TestFencedOnceResumes: one PRODUCER_FENCED commit (a transaction Kafka
// aborted while it could not answer) costs a retry with a fresh producer, not
// the namespace: the fenced batch is read again from the last checkpoint and
// every event reaches Kafka, and the retry is audited.
func TestFencedOnceResumes(t *testing.T) {
	defer func(d time.Duration) { fenceRetryDelay = d }(fenceRetryDelay)
	fenceRetryDelay = 10 * time.Millisecond
	first := batch(nil, ev{op: "insert", t: 200, i: 1, id: "a", doc: doc("a")})
	src := &replaySource{streams: [][]step{
		{first},
		// Resumed from the last checkpoint, the stream delivers the
		// fenced batch again, then the next.
		{first, batch(nil, ev{op: "insert", t: 201, i: 1, id: "b", doc: doc("b")})},
	}}
	r := newReplayRig(t, src, Config{})
	putState(context.Background(), r.c, rns, streamState{StartT: 100})
	fenceCommits(r, false, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.c.runNamespace(ctx, rns) }()
	for {
		if evs := events(t, r); len(evs) >= 2 {
			checkTable(t, evs, want{"a": doc("a"), "b": doc("b")})
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the namespace stopped after one fence: %v", err)
		case <-ctx.Done():
			t.Fatalf("events %v: the namespace did not resume after one fence", events(t, r))
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("runNamespace: %v", err)
	}
	if n := fenceRetries(t, r); n != 1 {
		t.Fatalf("%d capture.fence_retry audit entries, want 1", n)
	}
}

// TestFencedTwiceStops: a second fence within fenceRetryWindow (another
// capture process holds the stream) stops the namespace with ErrFenced after
// exactly one retry, so two writers never take turns.
func TestFencedTwiceStops(t *testing.T) {
	defer func(d time.Duration) { fenceRetryDelay = d }(fenceRetryDelay)
	fenceRetryDelay = 10 * time.Millisecond
	b := batch(nil, ev{op: "insert", t: 200, i: 1, id: "a", doc: doc("a")})
	src := &replaySource{streams: [][]step{{b}, {b}, {b}}}
	r := newReplayRig(t, src, Config{})
	putState(context.Background(), r.c, rns, streamState{StartT: 100})
	// The commit is answered late, so the stream's script ends (a read
	// error) while the group is still committing: the fence must still be
	// what the namespace decides on, not the read error, which would only
	// resume the stream and open a third one.
	fenceCommits(r, true, 300*time.Millisecond)
	// Capture's log says why each stream ended, for a failure below.
	logs := &testbed.LockedBuffer{}
	r.c.log = slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.c.runNamespace(ctx, rns); !errors.Is(err, ErrFenced) {
		t.Fatalf("runNamespace: %v, want ErrFenced\n%s", err, logs)
	}
	if n := len(src.watches()); n != 2 {
		t.Fatalf("%d streams opened, want 2 (the first and its one retry); capture's log:\n%s", n, logs)
	}
	// (What the fenced transactions hold stays uncommitted: the broker
	// aborts them on their timeout; kfake, answering for it here, leaves
	// them open, so their records are not read back.)
	if n := fenceRetries(t, r); n != 1 {
		t.Fatalf("%d capture.fence_retry audit entries, want 1", n)
	}
}

// fenceRetries counts the capture.fence_retry audit entries of rns.
func fenceRetries(t *testing.T, r *replayRig) int {
	t.Helper()
	entries, err := r.store.Audit(context.Background(), checkpoints.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if e.Action == "capture.fence_retry" && e.Target == rns {
			n++
		}
	}
	return n
}
