//go:build integration

package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/reconcile"
)

// TestIntegrationDemo runs `make demo`'s script, smaller, and checks the story
// it told against what it read back from the daemon: every stage reached, the
// injected rows found by a round, one trigger fired, the plan complete and the
// final round clean.
func TestIntegrationDemo(t *testing.T) {
	// Half make demo's write load: on two shared cores a slow hour made
	// rounds under 200 changes/s outlast the demo's waits.
	runDemo(t, "DEMO_DOCS=20000", "DEMO_RATE=100", "DEMO_ADDR=127.0.0.1:17075", "DEMO_DB="+testbed.UniqueName(t, "demo"))
}

// TestDemoUnderLoad runs the demo's three-stage plan with its default
// 100,000 documents while two busy loops, started and stopped by the test,
// occupy both cores: no round may report a divergent row the demo did not
// corrupt, no trigger may fire but the one the corruption causes, and the
// plan must complete. It takes 5 to 30 minutes, so it runs only with
// TIDEMARK_DEMO_LOAD=1 (`make demo-load`), not in `make test`.
func TestDemoUnderLoad(t *testing.T) {
	if os.Getenv("TIDEMARK_DEMO_LOAD") == "" {
		t.Skip("set TIDEMARK_DEMO_LOAD=1 (make demo-load): 5 to 30 minutes under a CPU load")
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	for i := 0; i < 2; i++ {
		// Bounded: killed when the test ends, and by timeout if it does not.
		busy := exec.CommandContext(ctx, "timeout", "2400", "sh", "-c", "while :; do :; done")
		if err := busy.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { busy.Process.Kill(); busy.Wait() })
	}
	runDemo(t, "DEMO_ADDR=127.0.0.1:17076", "DEMO_DB="+testbed.UniqueName(t, "demoload"))
}

// TestDemoSlowSink runs the demo's three-stage plan with the sink capped at
// 300 writes/s (sink.throttle.max_writes_per_second) under 100 changes/s, so
// each stage's widening backfill puts the pipeline minutes behind and rounds
// run while it is more than 30 s behind: still no false divergence, only the
// injected corruption fires a trigger, and the plan completes. The test
// fails, too, if no round saw the pipeline over 30 s behind: then it did not
// test what it says. Opt-in like TestDemoUnderLoad (`make demo-load`).
func TestDemoSlowSink(t *testing.T) {
	if os.Getenv("TIDEMARK_DEMO_LOAD") == "" {
		t.Skip("set TIDEMARK_DEMO_LOAD=1 (make demo-load): 5 to 20 minutes with a throttled sink")
	}
	dir := runDemo(t, "DEMO_DOCS=20000", "DEMO_RATE=100", "DEMO_SINK_RATE=300",
		"DEMO_ADDR=127.0.0.1:17077", "DEMO_DB="+testbed.UniqueName(t, "demoslow"))
	var worst float64
	var during string
	for _, rep := range readReports(t, dir) {
		for _, p := range append(slices.Clone(rep.LagStart), rep.LagEnd...) {
			if p.SecondsBehind > worst {
				worst, during = p.SecondsBehind, rep.ID
			}
		}
	}
	t.Logf("the most a round saw the pipeline behind: %.0f s (round %s)", worst, during)
	if worst <= 30 {
		t.Errorf("no round ran with the pipeline more than 30 s behind (at most %.1f s): the sink was not slowed enough to test the loop under lag", worst)
	}
}

// readReports reads every reconcile report the demo wrote.
func readReports(t *testing.T, dir string) []reconcile.Report {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "reports", "*.json"))
	var out []reconcile.Report
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var rep reconcile.Report
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out = append(out, rep)
	}
	return out
}

func runDemo(t *testing.T, env ...string) (dir string) {
	testbed.Kafka(t)
	testbed.Cassandra(t)
	testbed.Mongo(t)
	dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "deploy/local/demo")
	cmd.Dir = testbed.RepoRoot()
	cmd.Env = append(append(os.Environ(), "DEMO_DIR="+dir), env...)
	began := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("the demo took %s", time.Since(began).Round(time.Second))
	if err != nil {
		t.Fatalf("the demo failed: %v\n%s", err, testbed.Tail(string(out), 6000))
	}
	b, err := os.ReadFile(filepath.Join(dir, "outcome.json"))
	if err != nil {
		t.Fatalf("no outcome: %v\n%s", err, testbed.Tail(string(out), 6000))
	}
	var o Outcome
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	if !o.ReconcileClean || !o.PlanComplete || o.Error != "" {
		t.Errorf("outcome: clean %v, plan complete %v, error %q", o.ReconcileClean, o.PlanComplete, o.Error)
	}
	if !slices.Equal(o.StagesSeen, []string{"canary", "half", "all"}) {
		t.Errorf("stages seen %v", o.StagesSeen)
	}
	if o.TriggersFired != 1 {
		t.Errorf("%d triggers fired (%v), want exactly the one the injected divergence caused", o.TriggersFired, o.TriggerNames)
	}
	injected, found := slices.Clone(o.Injected), slices.Clone(o.Found)
	slices.Sort(injected)
	slices.Sort(found)
	if len(injected) == 0 || !slices.Equal(injected, found) {
		t.Errorf("injected %v, a round found %v", injected, found)
	}
	// No false divergence: every divergent key of every round is one the
	// demo corrupted.
	reports := readReports(t, dir)
	if len(reports) == 0 {
		t.Error("no reconcile reports")
	}
	for _, rep := range reports {
		for _, k := range rep.Divergent {
			if id := hex.EncodeToString(k.ID[min(1, len(k.ID)):]); !slices.Contains(injected, id) {
				t.Errorf("round %s (%s, started %s): %s row %x (document %s) is %s, and the demo did not corrupt it",
					rep.ID, rep.Status, rep.Start.Format(time.RFC3339), k.Table, k.Key, id, k.Class)
			}
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", testbed.Tail(string(out), 6000))
	}
	return dir
}
