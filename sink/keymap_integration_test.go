//go:build integration

package sink

import (
	"context"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
)

// TestIntegrationKeyMapEntriesOfGoneDocumentsExpire checks the key map's
// retention: the entry of a live document has no TTL; the entry of a deleted
// one expires after the table's gc_grace_seconds, so deleted _ids do not keep
// a key-map row for good; and once it has expired, a replay of an older
// version of the document still leaves no row behind (the delete's tombstone
// shadows it), which is why dropping the entry is safe.
func TestIntegrationKeyMapEntriesOfGoneDocumentsExpire(t *testing.T) {
	s := testbed.Cassandra(t)
	ks := testbed.UniqueName(t, "km")
	ns := ks + ".users"
	m, _ := testbed.UsersMapping(t, s, ns, ks)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const grace = 4
	if err := s.Query("ALTER TABLE " + ks + ".users_by_email WITH gc_grace_seconds = 4").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	byEmail := m.Tables(ns)[1]
	if byEmail.Name != "users_by_email" || !byEmail.NeedsKeyMap() {
		t.Fatalf("table %s, key map %v: want users_by_email with a key map", byEmail.Name, byEmail.NeedsKeyMap())
	}
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: "k1"}, {Key: "email", Value: "k1@x.org"}})
	if err != nil {
		t.Fatal(err)
	}
	id := bsonValue(t, "k1")
	rowOf := func() *transform.Row {
		rows, err := m.Apply(ns, doc)
		if err != nil {
			t.Fatal(err)
		}
		for i := range rows {
			if rows[i].Table == byEmail {
				return &rows[i]
			}
		}
		t.Fatal("no users_by_email row")
		return nil
	}
	ins := &envelope.Event{Op: envelope.OpInsert, Namespace: ns, ID: id, Version: envelope.Version{T: 1796500000, I: 1}, Doc: doc}
	del := &envelope.Event{Op: envelope.OpDelete, Namespace: ns, ID: id, Version: envelope.Version{T: 1796500001, I: 1}}
	entryTTL := func() (ttl *int, found bool) {
		err := s.Query("SELECT TTL(version) FROM "+ks+"."+KeyMapTable+" WHERE tbl = ? AND id = ?", byEmail.Name, ins.Key()).
			ScanContext(ctx, &ttl)
		if err == gocql.ErrNotFound {
			return nil, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return ttl, true
	}
	rowCount := func() int {
		var n int
		if err := s.Query("SELECT count(*) FROM "+ks+".users_by_email WHERE email = ?", "k1@x.org").ScanContext(ctx, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	if err := w.ApplyMapped(ctx, byEmail, ins, rowOf()); err != nil {
		t.Fatal(err)
	}
	if ttl, found := entryTTL(); !found || ttl != nil {
		t.Fatalf("live document's entry: found %v, TTL %v; want it kept without a TTL", found, ttl)
	}
	if err := w.ApplyMapped(ctx, byEmail, del, nil); err != nil {
		t.Fatal(err)
	}
	if ttl, found := entryTTL(); !found || ttl == nil || *ttl < 1 || *ttl > grace {
		t.Fatalf("deleted document's entry: found %v, TTL %v; want a TTL of at most gc_grace_seconds (%d)", found, ttl, grace)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if _, found := entryTTL(); !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deleted document's key-map entry did not expire")
		}
	}
	// A replay of the insert after the entry expired: the row is written at
	// the insert's version, under the delete's tombstone, and stays invisible.
	if err := w.ApplyMapped(ctx, byEmail, ins, rowOf()); err != nil {
		t.Fatal(err)
	}
	if n := rowCount(); n != 0 {
		t.Errorf("after replaying the insert: %d users_by_email rows, want 0 (the delete is newer)", n)
	}
}
