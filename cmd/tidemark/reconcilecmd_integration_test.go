//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/reconcile"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationReconcileThroughTheDaemon runs the real binary: after the
// backfill, `tidemark reconcile --remote` reports a clean round; a row
// deleted behind the pipeline's back is reported missing, `tidemark repair
// --remote --report` restores it, and a round run by the CLI itself (against
// the config's servers) is clean again. Reports are listed by the API.
func TestIntegrationReconcileThroughTheDaemon(t *testing.T) {
	e := newDaemonEnv(t, "rcd")
	s, mc, dir, bin, db, ns, ks, m := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	prefix := testbed.UniqueName(t, "rcd")
	cfg := e.config(addr, prefix, ", backfill: {chunk_size: 500}",
		fmt.Sprintf("reconcile: {report_dir: %s/reports, in_flight_wait: 15s, settle: 1s}\n", dir))
	cfgPath := filepath.Join(dir, "tidemark.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	var docs []any
	for i := range 2000 {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("d%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	testbed.RunDaemon(t, ctx, bin, "daemon", cfgPath)
	cli := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, bin, args...).Output()
		return string(out), err
	}
	remote := []string{"--remote", "--addr", addr, "--token-file", filepath.Join(dir, "token")}
	want := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
	for deadline := time.Now().Add(2 * time.Minute); !bytes.Equal(testbed.Snapshot(t, s, m, ns), want); time.Sleep(300 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the backfill did not complete")
		}
	}

	round := func(args ...string) (*reconcile.Report, error) {
		t.Helper()
		out, err := cli(append([]string{"reconcile", "--namespace", ns, "--json"}, args...)...)
		var rep reconcile.Report
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
			t.Fatalf("reconcile %v: %v (%v)\n%s", args, jerr, err, out)
		}
		return &rep, err
	}
	rep, err := round(append(remote, "--reason", "first check")...)
	if err != nil || rep.Status != "clean" || rep.RowsCompared != 8000 {
		t.Fatalf("first round: %v, %s, %d rows, %v", err, rep.Status, rep.RowsCompared, rep.Counts)
	}

	if err := s.Query("DELETE FROM " + ks + ".users WHERE id = '7'").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = round(append(remote, "--reason", "after the delete")...)
	if err == nil || rep.Status != "divergent" || rep.Counts[reconcile.ClassMissing] != 1 || len(rep.Divergent) != 1 {
		t.Fatalf("round after the delete: exit %v, %s, %v", err, rep.Status, rep.Counts)
	}
	out, err := cli(append([]string{"repair", "--report", rep.ID, "--reason", "restore row 7", "--json"}, remote...)...)
	var res reconcile.RepairResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.Fixed != 1 || len(res.Remaining) != 0 {
		t.Fatalf("repair: %v %+v\n%s", err, res, out)
	}
	// The CLI on its own, against the servers of the config.
	rep, err = round("--config", cfgPath)
	if err != nil || rep.Status != "clean" {
		t.Fatalf("round by the CLI after the repair: %v %s %v", err, rep.Status, rep.Counts)
	}

	ac, _ := admin.NewClient(addr, filepath.Join(dir, "token"))
	var list []daemon.ReportListing
	if err := ac.Do(ctx, "GET", "/v1/reports", nil, &list); err != nil || len(list) < 2 {
		t.Fatalf("GET /v1/reports: %v %+v", err, list)
	}
	var audit []map[string]any
	if err := ac.Do(ctx, "GET", "/v1/audit?action=reconcile.repair", nil, &audit); err != nil || len(audit) != 1 || audit[0]["reason"] != "restore row 7" {
		t.Fatalf("repair audit: %v %+v", err, audit)
	}
}
