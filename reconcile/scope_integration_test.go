//go:build integration

package reconcile

import (
	"context"
	"testing"
	"time"
)

// TestIntegrationScopes: a row missing from users_by_email is found by a
// round of that table, of the token range holding it and of its document's
// _id, and not by rounds of the other table, another range or another _id.
func TestIntegrationScopes(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f.load(ctx, 5000)
	byEmail := f.ks + ".users_by_email"
	if err := f.s.Query("DELETE FROM " + byEmail + " WHERE email = 'u42@x.org'").ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	tok := tokenOf([]byte("u42@x.org"))
	other := tok + 1<<62
	if other < tok {
		other = tok - 1<<62
	}
	r := f.reconciler(Config{})
	r.d.Lag = Quiescent{}
	for _, c := range []struct {
		name    string
		scope   Scope
		missing int64
		rows    int64
	}{
		{"table users", Scope{Table: f.ks + ".users"}, 0, 10_000},
		{"table users_by_email", Scope{Table: byEmail}, 1, 9_999},
		{"range holding the key", Scope{MinToken: &tok, MaxToken: &tok}, 1, 1},
		{"range without it", Scope{MinToken: &other, MaxToken: &other}, 0, 0},
		{"its _id", Scope{IDs: []string{"42"}}, 1, 3},
		{"another _id", Scope{IDs: []string{"43"}}, 0, 4},
	} {
		c.scope.Namespace = f.ns
		rep, err := r.Round(ctx, c.scope, RoundOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if rep.Counts[ClassMissing] != c.missing || rep.RowsCompared != c.rows {
			t.Errorf("%s: %s, %d missing, %d rows compared; want %d missing, %d rows (counts %v)",
				c.name, rep.Status, rep.Counts[ClassMissing], rep.RowsCompared, c.missing, c.rows, rep.Counts)
		}
	}
}
