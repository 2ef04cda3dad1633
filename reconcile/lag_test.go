package reconcile

import (
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
)

func TestQuietEnough(t *testing.T) {
	l := &PipelineLag{Settle: 30 * time.Millisecond}
	if !l.quietEnough("t", 0, 10, 10) || !l.quietEnough("t", 0, 11, 10) {
		t.Fatal("nothing left must be caught up")
	}
	if l.quietEnough("t", 0, 8, 10) {
		t.Fatal("two offsets left is behind")
	}
	// One offset left: a commit marker once it stays put for Settle.
	if l.quietEnough("t", 1, 9, 10) {
		t.Fatal("one offset left counted at once")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !l.quietEnough("t", 1, 9, 10) {
		if time.Now().After(deadline) {
			t.Fatal("a quiet partition never settled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The sink moved: the clock starts again.
	if l.quietEnough("t", 1, 10, 11) {
		t.Fatal("a moving partition counted as settled")
	}
}

func TestCaptureCaughtFromTheCheckpoint(t *testing.T) {
	ctx := t.Context()
	st := checkpointstest.New()
	l := &PipelineLag{Store: st}
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 1}); ok || err != nil {
		t.Fatalf("no stream checkpoint: %v %v", ok, err)
	}
	// Not streamed yet: everything strictly before the start is covered.
	checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+"app.users", streamCheckpoint{StartT: 100})
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 99, I: 5_000_000}); !ok || err != nil {
		t.Fatalf("before the start: %v %v", ok, err)
	}
	// At the start and later the oplog must say whether anything is newer;
	// without a MongoDB client that is an error, never a yes.
	if ok, err := l.captureCaught(ctx, "app.users", envelope.Version{T: 100}); ok || err == nil {
		t.Fatalf("at the start without an oplog: %v %v", ok, err)
	}
	// Streamed: everything up to the last produced event is covered.
	checkpoints.PutJSON(ctx, st, checkpoints.PrefixCapture+"app.users", streamCheckpoint{StartT: 100, Token: []byte{1}, T: 200, I: 3})
	for v, want := range map[envelope.Version]bool{{T: 200, I: 3}: true, {T: 150}: true} {
		if ok, err := l.captureCaught(ctx, "app.users", v); ok != want || err != nil {
			t.Errorf("%v: %v %v", v, ok, err)
		}
	}
}

func TestPartitionOfIsStable(t *testing.T) {
	key := envelope.Key(mustRaw(t, int64(42)))
	p := PartitionOf("topic", key, 12)
	for range 10 {
		if PartitionOf("topic", key, 12) != p {
			t.Fatal("the same key went to another partition")
		}
	}
	if p < 0 || p >= 12 {
		t.Fatalf("partition %d of 12", p)
	}
}
