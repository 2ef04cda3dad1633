//go:build integration

package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestIntegrationCheckpointsCopyIntoKafka moves a file store into a new Kafka
// store with the CLI, as the upgrade note says: the Kafka store then holds
// the key and the audit history, plus the copy's own audit entry, and a
// second copy is refused with exit status 2.
func TestIntegrationCheckpointsCopyIntoKafka(t *testing.T) {
	e := newDaemonEnv(t, "cpy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	old := filepath.Join(e.dir, "old-state")
	src, err := checkpoints.OpenFile(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Put(ctx, "capture/"+e.ns, []byte(`{"token":"abc"}`)); err != nil {
		t.Fatal(err)
	}
	if err := src.Append(ctx, checkpoints.AuditEntry{Actor: "alice", Action: "pause", Result: "ok", Reason: "before the move"}); err != nil {
		t.Fatal(err)
	}
	topic := testbed.UniqueName(t, "cpy") + ".checkpoints"
	prefix := testbed.UniqueName(t, "cpy")
	cfg := strings.Replace(e.config("127.0.0.1:17098", prefix, "", ""), "checkpoints: {kind: file, dir: "+e.dir+"/state}",
		"checkpoints: {kind: kafka, topic: "+topic+"}", 1)
	if !strings.Contains(cfg, topic) {
		t.Fatal("the config still names the file store")
	}
	path := filepath.Join(e.dir, "copy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	copyCmd := func() (string, error) {
		out, err := exec.CommandContext(ctx, e.bin, "checkpoints", "copy", "--from", old, "--config", path, "--reason", "moving to Kafka").CombinedOutput()
		return string(out), err
	}
	out, err := copyCmd()
	if err != nil || !strings.Contains(out, "copied 1 keys and 1 audit entries") {
		t.Fatalf("copy: %v\n%s", err, out)
	}
	out, err = copyCmd()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "already holds") {
		t.Fatalf("second copy: %v, want exit 2 and a refusal\n%s", err, out)
	}

	dst, err := checkpoints.OpenKafka(ctx, topic, []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if v, err := dst.Get(ctx, "capture/"+e.ns); err != nil || string(v) != `{"token":"abc"}` {
		t.Fatalf("copied resume token: %q %v", v, err)
	}
	es, err := dst.Audit(ctx, checkpoints.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, en := range es {
		got = append(got, en.Action+"/"+en.Result)
	}
	if strings.Join(got, ",") != "pause/ok,checkpoints.copy/ok" {
		t.Fatalf("audit log of the new store: %v", got)
	}
}
