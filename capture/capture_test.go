package capture

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/tidemarkhq/tidemark/envelope"
	"go.mongodb.org/mongo-driver/bson"
)

func TestConfigListsEveryProblem(t *testing.T) {
	err := Config{Namespaces: []string{"nodot", "db."}, MaxRecordBytes: -1, UpdateLookup: "sometimes", Backfill: BackfillConfig{RateLimit: -1}}.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{`"nodot"`, `"db."`, "max_record_bytes", "rate_limit", "update_lookup"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if err := (Config{Namespaces: []string{"app.users"}}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestOversizeEventGoesToDeadLetter(t *testing.T) {
	c := &Capture{cfg: Config{Namespaces: []string{"a.b"}, MaxRecordBytes: 1024}.WithDefaults(), m: newMetrics(nil), log: slog.Default()}
	c.cfg.MaxRecordBytes = 1024
	small, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}, {Key: "x", Value: "y"}})
	big, _ := bson.Marshal(bson.D{{Key: "_id", Value: 2}, {Key: "x", Value: strings.Repeat("z", 4096)}})
	for _, tc := range []struct {
		doc  bson.Raw
		dead bool
	}{{small, false}, {big, true}} {
		e := envelope.Event{Op: envelope.OpInsert, Namespace: "a.b", ID: tc.doc.Lookup("_id"), Version: envelope.Version{T: 5, I: 1}, Doc: tc.doc}
		rec, dl := c.toRecord("tidemark.a.b", &e)
		if (dl != nil) != tc.dead || (rec != nil) == tc.dead {
			t.Fatalf("dead=%v: rec=%v dl=%v", tc.dead, rec, dl)
		}
		if tc.dead {
			d, err := envelope.DecodeDeadLetter(dl.Value)
			if err != nil || dl.Topic != "tidemark.deadletter" || !bytes.Equal(d.Key, e.Key()) || d.Version != e.Version ||
				!strings.Contains(d.Reason, "exceeds max_record_bytes") || len(d.Record) == 0 {
				t.Fatalf("dead letter: %+v %v", d, err)
			}
		} else if got, err := envelope.Decode(rec.Value); err != nil || !bytes.Equal(got.Doc, tc.doc) || !bytes.Equal(rec.Key, e.Key()) {
			t.Fatalf("record: %v", err)
		}
	}
}

func TestHistoryLostErrorNamesGapAndRecovery(t *testing.T) {
	err := error(&HistoryLostError{Namespace: "app.users", Checkpoint: envelope.Version{T: 100, I: 2}, Oldest: envelope.Version{T: 500}})
	for _, want := range []string{"after 100.2", "oldest available: 500.0", "tidemark backfill --namespace app.users --reset-stream"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}
