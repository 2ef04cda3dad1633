//go:build integration

package validate

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tidemarkhq/tidemark/transform"
)

// TestIntegrationUnsafeColumnsJudgeTheLiveTable: UnsafeColumns classifies
// the types Cassandra has, as system_schema prints them. Of a table with a
// non-frozen list, set, map of frozen lists, frozen list, a non-frozen UDT
// fed by the spec's frozen<address> and a static column, only the list is
// unsafe; a counter column the spec calls bigint is unsafe too; and a column
// the table lacks is judged by the spec's type.
func TestIntegrationUnsafeColumnsJudgeTheLiveTable(t *testing.T) {
	s := newStack(t)
	for _, stmt := range []string{
		"CREATE TABLE %s.kinds (b int, id text, l list<text>, st set<text>, ml map<text, frozen<list<int>>>, " +
			"fl frozen<list<int>>, a address, sn text static, PRIMARY KEY ((b), id))",
		"CREATE TABLE %s.hits (id text PRIMARY KEY, n counter)",
	} {
		if err := s.cass.Query(fmt.Sprintf(stmt, s.ks)).Exec(); err != nil {
			t.Fatal(err)
		}
	}
	m, err := transform.Parse(fmt.Appendf(nil, `version: v1
collections:
  - namespace: %[2]s.kinds
    tables:
      - keyspace: %[1]s
        table: kinds
        partition_key: [b]
        clustering_key: [id]
        columns:
          - {name: b, type: int, compute: hash_bucket, args: [_id], buckets: 4}
          - {name: id, type: text, from: _id, convert: string}
          - {name: l, type: "list<text>", from: l}
          - {name: st, type: "set<text>", from: l}
          - {name: ml, type: "map<text, frozen<list<int>>>", from: ml}
          - {name: fl, type: "frozen<list<int>>", from: fl}
          - {name: a, type: frozen<address>, from: a, fields: [{name: city, type: text, from: city}]}
          - {name: sn, type: text, from: sn}
          - {name: missing, type: "list<int>", from: fl}
  - namespace: %[2]s.hits
    tables:
      - keyspace: %[1]s
        table: hits
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: n, type: bigint, from: n}
`, s.ks, s.db))
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnsafeColumns(context.Background(), s.cass, m)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range got {
		names = append(names, u.Table+"."+u.Column+" "+u.Type)
	}
	want := []string{s.ks + ".hits.n counter", s.ks + ".kinds.l list<text>", s.ks + ".kinds.missing list<int>"}
	if strings.Join(names, "|") != strings.Join(want, "|") {
		t.Fatalf("unsafe columns %q, want %q", names, want)
	}
}
