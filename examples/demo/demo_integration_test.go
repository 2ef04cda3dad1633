//go:build integration

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
)

// TestIntegrationDemo runs `make demo`'s script, smaller, and checks the story
// it told against what it read back from the daemon: every stage reached, the
// injected rows found by a round, one trigger fired, the plan complete and the
// final round clean.
func TestIntegrationDemo(t *testing.T) {
	testbed.Kafka(t)
	testbed.Cassandra(t)
	testbed.Mongo(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "deploy/local/demo")
	cmd.Dir = testbed.RepoRoot()
	// Half make demo's write load: on two shared cores a slow hour made
	// rounds under 200 changes/s outlast the demo's waits.
	cmd.Env = append(os.Environ(), "DEMO_DOCS=20000", "DEMO_RATE=100", "DEMO_DIR="+dir, "DEMO_ADDR=127.0.0.1:17075")
	out, err := cmd.CombinedOutput()
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
	if t.Failed() {
		t.Logf("demo output:\n%s", testbed.Tail(string(out), 6000))
	}
}
