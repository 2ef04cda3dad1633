package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// TestCheckpointsCopyJSON copies a file store into another (the configured
// one, of kind file) and reads the --json answer and the copied keys back.
func TestCheckpointsCopyJSON(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src, err := checkpoints.OpenFile(filepath.Join(dir, "from"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"capture/app.users", "sink/paused", "reconcile/latest/app.users"} {
		if err := src.Put(ctx, k, []byte(`"`+k+`"`)); err != nil {
			t.Fatal(err)
		}
	}
	src.Close()
	cfg := filepath.Join(dir, "tidemark.yaml")
	os.WriteFile(filepath.Join(dir, "tokens"), []byte("ops:0123456789abcdef0123:admin\n"), 0o600)
	os.WriteFile(cfg, []byte("roles: [capture]\ncapture: {namespaces: [app.users]}\nadmin: {tokens_file: "+filepath.Join(dir, "tokens")+
		"}\ncheckpoints: {kind: file, dir: "+filepath.Join(dir, "to")+"}\n"), 0o600)
	var out, errb bytes.Buffer
	if code := dispatch(ctx, []string{"checkpoints", "copy", "--from", filepath.Join(dir, "from"), "--config", cfg, "--reason", "move", "--json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var got struct {
		Keys  int    `json:"keys"`
		Store string `json:"store"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.Keys != 3 || got.Store != "file" {
		t.Fatalf("answer %+v (%v):\n%s", got, err, out.String())
	}
	dst, err := checkpoints.OpenFile(filepath.Join(dir, "to"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	for _, k := range []string{"capture/app.users", "sink/paused", "reconcile/latest/app.users"} {
		if v, err := dst.Get(ctx, k); err != nil || string(v) != `"`+k+`"` {
			t.Errorf("%s: %q %v", k, v, err)
		}
	}
}
