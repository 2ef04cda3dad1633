//go:build integration

package reconcile

import (
	"context"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// TestIntegrationRoundResumesAfterTimeBox: a rate-limited round that runs
// out of its time box stops as incomplete with its progress saved; the next
// round of the scope continues it and compares every row exactly once.
func TestIntegrationRoundResumesAfterTimeBox(t *testing.T) {
	const n = 20_000
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f.load(ctx, n)
	scope := Scope{Namespace: f.ns}

	slow := f.reconciler(Config{TimeBox: 2 * time.Second, DocsPerSecond: 4000, RowsPerSecond: 8000})
	slow.d.Lag = Quiescent{}
	var seen []Progress
	rep, err := slow.Round(ctx, scope, RoundOptions{OnProgress: func(p Progress) { seen = append(seen, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != "incomplete" || rep.DocsScanned == 0 || rep.DocsScanned >= n {
		t.Fatalf("time-boxed round: %s after %d documents (%s)", rep.Status, rep.DocsScanned, rep.Error)
	}
	// 2 s at 4,000 documents/s: the cap held (with a tenth of a second of
	// burst and one 256-document step).
	if rep.DocsScanned > 4000*2+400+2*256 {
		t.Errorf("%d documents in 2s despite a cap of 4000/s", rep.DocsScanned)
	}
	if len(seen) == 0 || seen[len(seen)-1].Percent <= 0 || seen[len(seen)-1].ID != rep.ID {
		t.Errorf("progress while running: %+v", seen)
	}
	st, ok, err := checkpoints.GetJSON[roundState](ctx, f.store, progressKey(scope))
	if err != nil || !ok || st.ID != rep.ID || st.SourceDone {
		t.Fatalf("saved progress: %+v %v %v", st.ID, ok, err)
	}
	sum, _, _ := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, f.store, checkpoints.KeyReconcileLatest+scope.Key())
	if sum.ID != rep.ID || sum.Clean {
		t.Errorf("summary of the incomplete round: %+v", sum)
	}

	fast := f.reconciler(Config{})
	fast.d.Lag = Quiescent{}
	rep2, err := fast.Round(ctx, scope, RoundOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first round stopped after %d documents; the second resumed it: %s, %d documents, %d rows", rep.DocsScanned, rep2.Status, rep2.DocsScanned, rep2.RowsCompared)
	if rep2.ResumedFrom != rep.ID || rep2.Status != "clean" || rep2.DocsScanned != n || rep2.RowsCompared != 4*n || rep2.Candidates != 0 {
		t.Fatalf("resumed round: from %q, %s, %d documents, %d rows, %d candidates, counts %v",
			rep2.ResumedFrom, rep2.Status, rep2.DocsScanned, rep2.RowsCompared, rep2.Candidates, rep2.Counts)
	}
	if _, ok, _ := checkpoints.GetJSON[roundState](ctx, f.store, progressKey(scope)); ok {
		t.Error("progress still saved after the round completed")
	}
}
