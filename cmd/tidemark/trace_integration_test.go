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
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/trace"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// TestIntegrationTrace follows documents of several _id types through the
// real pipeline with `tidemark trace`: every record of the key in Kafka is
// listed and applied, the rows equal the source through the transform, the
// newest write time is the newest record's version, the key map names the
// moved derived key. A column changed behind the pipeline's back makes the
// trace divergent in exactly that column, and the round that finds it is
// among the verdicts.
func TestIntegrationTrace(t *testing.T) {
	e := newDaemonEnv(t, "trc")
	s, mc, dir, bin, db, ns, ks, m := e.s, e.mc, e.dir, e.bin, e.db, e.ns, e.ks, e.m
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	prefix := testbed.UniqueName(t, "trc")
	cfgPath := filepath.Join(dir, "tidemark.yaml")
	os.WriteFile(cfgPath, []byte(e.config(addr, prefix, ", backfill: {chunk_size: 100}",
		fmt.Sprintf("reconcile: {report_dir: %s/reports, in_flight_wait: 15s, settle: 1s}\n", dir))), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	var docs []any
	for i := range 300 {
		docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("t-%d", i)}, {Key: "email", Value: fmt.Sprintf("t%d@x.org", i)}, {Key: "age", Value: int32(i % 80)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	testbed.RunDaemon(t, ctx, bin, "daemon", cfgPath)
	waitSame := func(what string) {
		t.Helper()
		want := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
		for deadline := time.Now().Add(2 * time.Minute); !bytes.Equal(testbed.Snapshot(t, s, m, ns), want); time.Sleep(300 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not match the source", what)
			}
		}
	}
	waitSame("backfill")
	// Other _id types, live.
	oid := primitive.NewObjectID()
	if _, err := coll.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: oid}, {Key: "email", Value: "oid@x.org"}, {Key: "age", Value: int32(30)}},
		bson.D{{Key: "_id", Value: int64(42)}, {Key: "email", Value: "n42@x.org"}, {Key: "age", Value: int32(42)}},
	}); err != nil {
		t.Fatal(err)
	}
	// Two live changes of t-7, the second moving its users_by_email key.
	for _, set := range []bson.D{{{Key: "age", Value: int32(77)}}, {{Key: "email", Value: "moved@x.org"}}} {
		if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "t-7"}}, bson.D{{Key: "$set", Value: set}}); err != nil {
			t.Fatal(err)
		}
	}
	waitSame("live changes")

	traceOf := func(id string) (*trace.Journey, string) {
		t.Helper()
		base := []string{"trace", "--addr", addr, "--token-file", filepath.Join(dir, "token")}
		out, err := exec.CommandContext(ctx, bin, append(base, "--json", ns, id)...).Output()
		var j trace.Journey
		if err != nil || json.Unmarshal(out, &j) != nil {
			t.Fatalf("trace %s: %v\n%s", id, err, out)
		}
		text, err := exec.CommandContext(ctx, bin, append(base, ns, id)...).CombinedOutput()
		if err != nil {
			t.Fatalf("trace %s (text): %v\n%s", id, err, text)
		}
		return &j, string(text)
	}
	// The sink commits asynchronously: wait until the trace sees every
	// record applied rather than assume when the commit lands.
	settled := func(id string, want string) *trace.Journey {
		t.Helper()
		var j *trace.Journey
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
			if j, _ = traceOf(id); j.State == want {
				return j
			}
			if time.Now().After(deadline) {
				t.Fatalf("trace %s: state %s (%s), want %s; %+v", id, j.State, j.Summary, want, j)
			}
		}
	}

	j := settled(`"t-7"`, trace.StateInSync)
	// The backfill row, the insert again when it fell after T0 (the stream
	// replays it; harmless), then the two updates.
	ops := map[string]int{}
	for _, r := range j.Kafka.Records {
		ops[r.Op]++
	}
	if !j.Source.Found || !j.Kafka.Complete || ops["backfill"] != 1 || ops["update"] != 2 || ops["insert"] > 1 || len(j.Kafka.Records) != 3+ops["insert"] {
		t.Fatalf("t-7: source found %v, scan complete %v, records %+v (want the backfill row and 2 updates)",
			j.Source.Found, j.Kafka.Complete, j.Kafka.Records)
	}
	newest := j.Kafka.Records[len(j.Kafka.Records)-1]
	for _, r := range j.Kafka.Records {
		if !r.Applied || r.Error != "" {
			t.Fatalf("t-7 record %+v: want applied and well-formed", r)
		}
	}
	if newest.Op != "update" {
		t.Fatalf("t-7 newest record %+v, want the update", newest)
	}
	for _, h := range j.Tables {
		if !h.Match || h.Row == nil || h.Stray != nil {
			t.Fatalf("%s: %+v", h.Table, h)
		}
		if h.Row.Version != newest.Version {
			t.Fatalf("%s: newest write time %s, want the newest record's version %s", h.Table, h.Row.Version, newest.Version)
		}
		if strings.HasSuffix(h.Table, ".users_by_email") && (h.KeyMap == nil || h.KeyMap.PrimaryKey["email"] != "moved@x.org") {
			t.Fatalf("users_by_email key map %+v, want the moved email", h.KeyMap)
		}
	}

	for _, id := range []string{fmt.Sprintf(`{"$oid":"%s"}`, oid.Hex()), `42`, `{"$numberLong":"42"}`} {
		if j := settled(id, trace.StateInSync); len(j.Kafka.Records) != 1 || !j.Source.Found {
			t.Fatalf("trace %s: %d records, found %v", id, len(j.Kafka.Records), j.Source.Found)
		}
	}
	if j, _ := traceOf(`"no-such-doc"`); j.State != trace.StateAbsent || len(j.Kafka.Records) != 0 {
		t.Fatalf("an unknown _id: %s, %d records", j.State, len(j.Kafka.Records))
	}

	// A column changed behind the pipeline's back, at a newer write time.
	us, _ := newestMicros(newest.Version)
	if err := s.Query(fmt.Sprintf("UPDATE %s.users USING TIMESTAMP %d SET age = 5 WHERE id = 't-7'", ks, us+1)).ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	j, text := traceOf(`"t-7"`)
	if j.State != trace.StateDivergent || !strings.Contains(text, "DIFFERS in age") {
		t.Fatalf("after corrupting age: %s\n%s", j.State, text)
	}
	for _, h := range j.Tables {
		if strings.HasSuffix(h.Table, ".users") && (h.Match || len(h.Columns) != 1 || h.Columns[0] != "age") {
			t.Fatalf("users: %+v, want age alone to differ", h)
		}
	}
	cmd := exec.CommandContext(ctx, bin, "reconcile", "--remote", "--addr", addr, "--token-file", filepath.Join(dir, "token"),
		"--namespace", ns, "--reason", "trace test", "--json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, _ := cmd.Output() // exit 1: the round is divergent
	var rep struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || rep.Status != "divergent" {
		t.Fatalf("round: %v %+v\n%s\n%s", err, rep, out, stderr.String())
	}
	j, _ = traceOf(`"t-7"`)
	if len(j.Verdicts) == 0 || j.Verdicts[0].Report != rep.ID || j.Verdicts[0].Class != "different" {
		t.Fatalf("verdicts %+v, want round %s calling t-7 different", j.Verdicts, rep.ID)
	}
}

// newestMicros turns a version "T.I" into its write timestamp.
func newestMicros(v string) (int64, error) {
	var ts, inc int64
	if _, err := fmt.Sscanf(v, "%d.%d", &ts, &inc); err != nil {
		return 0, err
	}
	return ts*1_000_000 + inc, nil
}
