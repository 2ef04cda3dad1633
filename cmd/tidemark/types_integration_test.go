//go:build integration

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegrationUnsafeListRefused maps a string array to a non-frozen
// list<text> column, the type a replay duplicates: `tidemark validate` must
// fail with an unsafe_type problem and `tidemark run` must refuse to start
// (exit 2), both naming the table, the column and the safe alternatives.
func TestIntegrationUnsafeListRefused(t *testing.T) {
	e := newDaemonEnv(t, "unsafe")
	if err := e.s.Query("CREATE TABLE " + e.ks + ".items (id text PRIMARY KEY, tags list<text>)").Exec(); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`version: unsafe-v1
collections:
  - namespace: %s
    tables:
      - keyspace: %s
        table: items
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: tags, type: "list<text>", from: tags}
`, e.ns, e.ks)
	if err := os.WriteFile(filepath.Join(e.dir, "spec.yaml"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(e.dir, "tidemark.yaml")
	prefix := e.db
	body := strings.Replace(e.config(freeAddr(t), prefix, "", ""), "roles: [capture, sink]", "roles: [sink]", 1)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	where := e.ks + ".items.tags"
	names := []string{where, "list<text>", "not replay-safe", "frozen<list<text>>", "set<text>", "convert: json"}

	out, err := exec.CommandContext(ctx, e.bin, "validate", "--spec", filepath.Join(e.dir, "spec.yaml"), "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("validate: %v, want exit status 1\n%s", err, out)
	}
	for _, want := range append([]string{"unsafe_type"}, names...) {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate does not say %q:\n%s", want, out)
		}
	}

	start := time.Now()
	out, err = exec.CommandContext(ctx, e.bin, "run", "--config", cfg).CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("run: %v, want exit status 2\n%s", err, out)
	}
	for _, want := range names {
		if !strings.Contains(string(out), want) {
			t.Errorf("run does not say %q:\n%s", want, out)
		}
	}
	t.Logf("run refused in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	// Nothing was written: the key map and the dead-letter topic are the
	// sink's first writes, and it must stop before them.
	var n int
	if err := e.s.Query("SELECT count(*) FROM " + e.ks + ".items").Scan(&n); err != nil || n != 0 {
		t.Fatalf("items holds %d rows (%v)", n, err)
	}
}

// TestIntegrationRunRefusesASpecTheTablesDoNotFit: a spec naming a table
// that does not exist, or a column the table lacks, is refused by `run`
// at start (exit 2, naming each), as `validate` refuses it, instead of the
// sink stopping or dead-lettering on its first write.
func TestIntegrationRunRefusesASpecTheTablesDoNotFit(t *testing.T) {
	e := newDaemonEnv(t, "unfit")
	if err := e.s.Query("CREATE TABLE " + e.ks + ".items (id text PRIMARY KEY, name text)").Exec(); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`version: unfit-v1
collections:
  - namespace: %[1]s
    tables:
      - keyspace: %[2]s
        table: items
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
          - {name: name, type: text, from: name}
          - {name: nope, type: int, from: n}
      - keyspace: %[2]s
        table: ghost
        partition_key: [id]
        columns:
          - {name: id, type: text, from: _id, convert: string}
`, e.ns, e.ks)
	if err := os.WriteFile(filepath.Join(e.dir, "spec.yaml"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(e.dir, "tidemark.yaml")
	body := strings.Replace(e.config(freeAddr(t), e.db, "", ""), "roles: [capture, sink]", "roles: [sink]", 1)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.bin, "run", "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("run: %v, want exit status 2\n%s", err, out)
	}
	for _, want := range []string{e.ks + ".items.nope: missing_column", e.ks + ".ghost: missing_table", "2 problems"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("run does not say %q:\n%s", want, out)
		}
	}
}
