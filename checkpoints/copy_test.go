package checkpoints_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// TestCopyFileStoreIntoKafka fills a file store as a daemon would, copies it
// into a Kafka store (kfake) holding no state yet, reopens that store as a restarted daemon
// would, and finds every key and every audit entry, in order, with its time.
// A second copy into the now non-empty store is refused and changes nothing.
func TestCopyFileStoreIntoKafka(t *testing.T) {
	ctx := context.Background()
	src, err := checkpoints.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"capture/app.users":                 `{"token":"8263a1"}`,
		"backfill/app.users/run-1":          `{"chunk":41}`,
		"verified/tidemark.app.users/3":     `{"offset":1200}`,
		checkpoints.PrefixIntent + "paused": `[{"topic":"tidemark.app.users","partition":2}]`,
	}
	for k, v := range want {
		if err := src.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC)
	for i, a := range []string{"pause", "rewind", "resume"} {
		if err := src.Append(ctx, checkpoints.AuditEntry{Time: t0.Add(time.Duration(i) * time.Minute), Actor: "alice", Action: a, Result: "ok", Reason: "ticket 7"}); err != nil {
			t.Fatal(err)
		}
	}
	_, kopts := fakeKafka(t)
	dst := openKafka(t, kopts, "t.checkpoints")
	// A daemon started on the new store before anyone copied: its audit
	// entry stays, and the copy's land after it.
	if err := dst.Append(ctx, checkpoints.AuditEntry{Time: t0.Add(-time.Hour), Actor: "auto:daemon", Action: "daemon.start", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	res, err := checkpoints.Copy(ctx, dst, src)
	if err != nil {
		t.Fatal(err)
	}
	if res.Keys != len(want) || res.AuditEntries != 3 {
		t.Fatalf("copied %+v, want %d keys and 3 audit entries", res, len(want))
	}
	dst.Close()

	again := openKafka(t, kopts, "t.checkpoints")
	got, err := again.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("the reopened store holds %d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if string(got[k]) != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	es, err := again.Audit(ctx, checkpoints.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for i, e := range es {
		actions = append(actions, e.Action)
		if i > 0 && !e.Time.Equal(t0.Add(time.Duration(i-1)*time.Minute)) {
			t.Errorf("entry %d time %s, want the original", i, e.Time)
		}
	}
	if strings.Join(actions, ",") != "daemon.start,pause,rewind,resume" {
		t.Errorf("audit actions %v, want the source's in order", actions)
	}

	if _, err := checkpoints.Copy(ctx, again, src); !errors.Is(err, checkpoints.ErrNotEmpty) {
		t.Fatalf("a copy into a non-empty store: %v, want a refusal", err)
	}
	if es2, _ := again.Audit(ctx, checkpoints.AuditFilter{}); len(es2) != len(es) {
		t.Fatalf("the refused copy appended %d audit entries", len(es2)-len(es))
	}
}
