package chaos

import "strings"

// specTemplate maps two collections into three tables, with every kind of
// nested value the workload writes: a set, a frozen list, a map of frozen
// lists, two UDTs, documents and arrays as JSON text, and a table keyed by
// a mutable field (orders_by_customer, kept by the key map) whose filter
// drops the row when the field is removed. KS, ORDERS and PROFILES are
// replaced by the keyspace and the two namespaces.
const specTemplate = `version: "chaos-v1"
collections:
  - namespace: ORDERS
    tables:
      - keyspace: KS
        table: orders
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: customer, type: text, from: customer}
          - {name: status, type: text, from: status, default: true, value: "new"}
          - {name: total, type: double, from: total}
          - {name: tags, type: "set<text>", from: tags}
          - {name: qty, type: "frozen<list<int>>", from: qty}
          - {name: items, type: text, from: items, convert: json}
          - {name: ship, type: "frozen<ship>", from: ship,
             fields: [{name: street, type: text, from: street}, {name: city, type: text, from: city},
                      {name: zip, type: text, from: zip}]}
          - {name: attrs, type: "map<text, text>", from: attrs}
          - {name: note, type: text, from: note}
          - {name: placed, type: timestamp, from: placed}
      - keyspace: KS
        table: orders_by_customer
        partition_key: [customer]
        clustering_key: [id]
        filter: {path: customer, exists: true}
        columns:
          - {name: customer, type: text, compute: lower, args: [customer]}
          - {name: id, type: text, from: _id, convert: string}
          - {name: total, type: double, from: total}
          - {name: status, type: text, from: status}
  - namespace: PROFILES
    tables:
      - keyspace: KS
        table: profiles
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id}
          - {name: name, type: text, compute: concat, args: [name.first, name.last], sep: " "}
          - {name: age, type: int, from: age}
          - {name: emails, type: "frozen<list<text>>", from: emails}
          - {name: flags, type: "set<int>", from: flags}
          - {name: scores, type: "map<text, frozen<list<int>>>", from: scores}
          - {name: home, type: "frozen<home>", from: home,
             fields: [{name: street, type: text, from: street}, {name: city, type: text, from: city}]}
          - {name: prefs, type: "map<text, text>", from: prefs}
          - {name: meta, type: text, from: meta, convert: json}
`

// schemaTemplate is the target schema of specTemplate, statement by statement.
var schemaTemplate = []string{
	`CREATE TYPE KS.ship (street text, city text, zip text)`,
	`CREATE TYPE KS.home (street text, city text)`,
	`CREATE TABLE KS.orders (id text PRIMARY KEY, customer text, status text, total double, tags set<text>,
	  qty frozen<list<int>>, items text, ship frozen<ship>, attrs map<text, text>, note text, placed timestamp)`,
	`CREATE TABLE KS.orders_by_customer (customer text, id text, total double, status text, PRIMARY KEY (customer, id))`,
	`CREATE TABLE KS.profiles (id text PRIMARY KEY, name text, age int, emails frozen<list<text>>, flags set<int>,
	  scores map<text, frozen<list<int>>>, home frozen<home>, prefs map<text, text>, meta text)`,
}

// Spec is the mapping spec for keyspace ks and the two namespaces.
func Spec(ks, orders, profiles string) string {
	return strings.NewReplacer("KS", ks, "ORDERS", orders, "PROFILES", profiles).Replace(specTemplate)
}

// Schema is the CQL that creates spec's tables in keyspace ks (which must exist).
func Schema(ks string) []string {
	out := make([]string, len(schemaTemplate))
	for i, s := range schemaTemplate {
		out[i] = strings.ReplaceAll(s, "KS", ks)
	}
	return out
}
