package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestTransformJSON: --json prints the rows as JSON a script can read, with
// JSON's own null, numbers, lists and maps, and times in RFC 3339.
func TestTransformJSON(t *testing.T) {
	doc := filepath.Join(t.TempDir(), "doc.json")
	os.WriteFile(doc, []byte(`{"_id":{"$oid":"65a1b2c3d4e5f60718293a4b"},"email":"A@x.io","name":{"first":"a","last":"b"},"age":3,`+
		`"balance":{"$numberDecimal":"1.50"},"created":{"$date":"2024-01-01T00:00:00Z"},"tags":["x"],"prefs":{"k":"v"},"score":1.5}`), 0o600)
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"transform", "--spec", "../../examples/specs/users.yaml", "--doc", doc, "--json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var got struct {
		Spec string `json:"spec_version"`
		Rows []struct {
			Table   string `json:"table"`
			Columns []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Value any    `json:"value"`
			} `json:"columns"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if got.Spec != "users-v1" || len(got.Rows) != 2 || got.Rows[0].Table != "app.users" || got.Rows[1].Table != "app.users_by_email" {
		t.Fatalf("rows: %+v", got)
	}
	vals := map[string]any{}
	for _, c := range got.Rows[0].Columns {
		vals[c.Name] = c.Value
	}
	for name, want := range map[string]any{"id": "65a1b2c3d4e5f60718293a4b", "age": 3.0, "balance": "1.50", "created_at": "2024-01-01T00:00:00Z",
		"address": nil, "score": 1.5, "status": "active", "name": "a b"} {
		if v, ok := vals[name]; !ok || v != want {
			t.Errorf("%s: %#v (present %v), want %#v", name, v, ok, want)
		}
	}
	if tags, ok := vals["tags"].([]any); !ok || len(tags) != 1 || tags[0] != "x" {
		t.Errorf("tags: %#v, want a JSON list", vals["tags"])
	}
	if prefs, ok := vals["prefs"].(map[string]any); !ok || prefs["k"] != "v" {
		t.Errorf("prefs: %#v, want a JSON object", vals["prefs"])
	}
	if e := got.Rows[1].Columns[0]; e.Name != "email" || e.Value != "a@x.io" {
		t.Errorf("users_by_email.email: %+v", e)
	}
}
