package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/reconcile"
)

func TestPrintReportText(t *testing.T) {
	r := &reconcile.Report{SchemaVersion: 1, ID: "20261125T080000Z-abcdef", Status: "divergent", SpecVersion: "users-v1",
		SpecChecksum: "0123456789abcdef", Scope: reconcile.Scope{Namespace: "app.users"}, DurationSeconds: 2.5,
		DocsScanned: 10, RowsCompared: 40, RowsPerSecond: 16, Candidates: 2,
		Tables: []reconcile.TableReport{{Table: "app.users", RowsSource: 10, RowsTarget: 10, Different: 1}},
		Sample: []reconcile.KeySample{{Table: "app.users", Class: "different", PrimaryKey: map[string]any{"id": "7"}, SourceID: "7", Columns: []string{"age"}}}}
	var b bytes.Buffer
	if err := printReport(&b, r, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"round 20261125T080000Z-abcdef  DIVERGENT  scope app.users  spec users-v1/0123456789ab",
		"10 documents, 40 rows compared", "different app.users map[id:7] _id 7 columns age"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := printReport(&b, r, true); err != nil || !strings.Contains(b.String(), `"schema_version": 1`) {
		t.Fatalf("json: %v\n%s", err, b.String())
	}
}

func TestPrintProgress(t *testing.T) {
	var b bytes.Buffer
	printProgress(&b, reconcile.Progress{ID: "r1", Phase: "scan", Percent: 42.5, DocsDone: 10, RowsDone: 20, RowsPerSecond: 1000, ETASeconds: 75})
	if got := b.String(); !strings.Contains(got, "42.5%") || !strings.Contains(got, "1000 rows/s") || !strings.Contains(got, "ETA 1m15s") {
		t.Fatalf("progress line %q", got)
	}
}

func TestRepairNeedsReasonAndKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := repairCmd(ctx, []string{"--report", "latest"}, &out, &errb)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "--reason") {
		t.Fatalf("repair without a reason: %v", err)
	}
	if _, err := daemon.Repair(ctx, nil, daemon.RepairRequest{Reason: "x"}, "t"); err == nil || daemon.StatusOf(err) != 400 {
		t.Fatalf("repair without keys: %d %v", daemon.StatusOf(err), err)
	}
	if _, err := daemon.Repair(ctx, nil, daemon.RepairRequest{Reason: "x", Report: "latest", IDs: []string{"1"}}, "t"); err == nil || daemon.StatusOf(err) != 400 {
		t.Fatalf("repair with both: %d %v", daemon.StatusOf(err), err)
	}
	if _, err := daemon.Repair(ctx, nil, daemon.RepairRequest{Reason: "x", IDs: []string{"1"}}, "t"); err == nil || daemon.StatusOf(err) != 400 {
		t.Fatalf("repair of _ids without a namespace: %d %v", daemon.StatusOf(err), err)
	}
	if _, err := daemon.Repair(ctx, nil, daemon.RepairRequest{Reason: "x", Keys: []reconcile.KeyRef{{Table: "a.b", Key: []byte{1}}}}, "t"); err == nil || daemon.StatusOf(err) != 400 {
		t.Fatalf("repair of keys without a namespace: %d %v", daemon.StatusOf(err), err)
	}
	err = repairCmd(ctx, []string{"--namespace", "a.b", "--keys", "a.users:zz", "--reason", "x"}, &out, &errb)
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "--keys") {
		t.Fatalf("bad --keys: %v", err)
	}
}

func TestReconcileConfigDefaults(t *testing.T) {
	c, err := config.Parse([]byte("spec: s.yaml\nadmin: {tokens_file: t}\ncapture: {namespaces: [app.users]}\nsink: {group: g1}\nreconcile: {interval: 30m}\n"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Reconcile.Interval != 30*time.Minute || c.Reconcile.SinkGroup != "g1" || c.Reconcile.SampleSize != 100 {
		t.Fatalf("reconcile config %+v", c.Reconcile)
	}
	if _, err := config.Parse([]byte("spec: s.yaml\nadmin: {tokens_file: t}\ncapture: {namespaces: [app.users]}\nreconcile: {bucket_bits: 30}\n"), func(string) string { return "" }); err == nil ||
		!strings.Contains(err.Error(), "bucket_bits") {
		t.Fatalf("bad bucket_bits accepted: %v", err)
	}
}
