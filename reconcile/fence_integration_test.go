//go:build integration

package reconcile

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/leader"
)

// TestIntegrationFencedRoundWritesNoSharedState: a round whose fence
// refuses (a scheduled round of a deposed leader) compares as usual but
// stores neither progress, nor a summary, nor verified marks: the summary
// stays the previous round's. Its own report says why it is incomplete.
func TestIntegrationFencedRoundWritesNoSharedState(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f.load(ctx, 500)
	f.startPipeline(ctx, 2)
	r := f.reconciler(Config{InFlightWait: 10 * time.Second})
	scope := Scope{Namespace: f.ns}
	first, err := r.Round(ctx, scope, RoundOptions{Actor: "test", Reason: "unfenced", Fence: func(context.Context) error { return nil }})
	if err != nil || first.Status != "clean" {
		t.Fatalf("first round: %v (status %s, error %q)", err, first.Status, first.Error)
	}
	verified, err := f.store.List(ctx, checkpoints.PrefixVerified)
	if err != nil || len(verified) == 0 {
		t.Fatalf("the clean round stored no verified marks (%v)", err)
	}

	asked := 0
	fence := func(context.Context) error { asked++; return leader.Check("leader/current", 1, 2) }
	rep, err := r.Round(ctx, scope, RoundOptions{Actor: "auto:reconcile", Reason: "scheduled", Fence: fence})
	if !errors.Is(err, leader.ErrDeposed) || rep == nil || rep.Status != "incomplete" || asked == 0 {
		t.Fatalf("fenced round: %v, report %+v, fence asked %d times; want ErrDeposed and an incomplete report", err, rep, asked)
	}
	sum, ok, err := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, f.store, checkpoints.KeyReconcileLatest+f.ns)
	if err != nil || !ok || sum.ID != first.ID {
		t.Fatalf("latest summary %q (%v), want the first round's %q", sum.ID, err, first.ID)
	}
	if _, err := f.store.Get(ctx, progressKey(scope)); !errors.Is(err, checkpoints.ErrNotFound) {
		t.Fatalf("the fenced round left progress: %v", err)
	}
	after, err := f.store.List(ctx, checkpoints.PrefixVerified)
	if err != nil || len(after) != len(verified) {
		t.Fatalf("verified marks %d -> %d (%v)", len(verified), len(after), err)
	}
	for k, v := range after {
		if string(verified[k]) != string(v) {
			t.Fatalf("the fenced round changed verified mark %s", k)
		}
	}
	stored, err := r.Reports().Get(rep.ID)
	if err != nil || stored.Status != "incomplete" {
		t.Fatalf("the fenced round's own report: %v %+v", err, stored)
	}
}
