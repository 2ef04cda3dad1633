package admin

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"log/slog"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
)

func TestMutatingCallsAreAuthenticatedAndAudited(t *testing.T) {
	store := checkpointstest.New()
	tokens := Tokens{"s3cret-token-0123456789": "alice"}
	srv := NewServer(tokens, store, true, slog.Default())
	paused := 0
	srv.Handle("POST /v1/pause", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paused++
		WriteJSON(w, 200, map[string]string{"actor": Actor(r.Context())})
	}), true)
	srv.Handle("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "ok") }), false)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	ctx := context.Background()

	anon, _ := NewClient(ts.URL, "")
	anon.Token = ""
	if err := anon.Do(ctx, "POST", "/v1/pause", map[string]string{"reason": "incident 42"}, nil); !IsUnauthorized(err) {
		t.Fatalf("anonymous pause: %v", err)
	}
	bad := &Client{Base: ts.URL, Token: "wrong-token-wrong-token", HTTP: http.DefaultClient}
	if err := bad.Do(ctx, "POST", "/v1/pause", map[string]string{"reason": "x"}, nil); !IsUnauthorized(err) {
		t.Fatalf("bad token pause: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tok"), []byte("alice:s3cret-token-0123456789\n"), 0o600)
	good, _ := NewClient(ts.URL, filepath.Join(dir, "tok"))
	if err := good.Do(ctx, "POST", "/v1/pause", map[string]string{}, nil); err == nil || !strings.Contains(err.Error(), "reason") {
		t.Fatalf("pause without reason: %v", err)
	}
	var out map[string]string
	if err := good.Do(ctx, "POST", "/v1/pause", map[string]string{"reason": "incident 42"}, &out); err != nil || out["actor"] != "alice" {
		t.Fatalf("authenticated pause: %v %v", out, err)
	}
	if err := anon.Do(ctx, "GET", "/v1/status", nil, nil); err != nil {
		t.Fatalf("open status: %v", err)
	}
	if paused != 1 {
		t.Fatalf("handler ran %d times, want 1", paused)
	}
	es, _ := store.Audit(ctx, checkpoints.AuditFilter{})
	want := []struct{ actor, result, reason string }{
		{"anonymous", "refused: not authenticated", "incident 42"},
		{"invalid-token", "refused: not authenticated", "x"},
		{"alice", "refused: no reason", ""},
		{"alice", "started", "incident 42"},
		{"alice", "ok", "incident 42"},
	}
	if len(es) != len(want) {
		t.Fatalf("%d audit entries, want %d: %+v", len(es), len(want), es)
	}
	for i, w := range want {
		if es[i].Actor != w.actor || es[i].Result != w.result || es[i].Reason != w.reason || es[i].Action != "POST /v1/pause" {
			t.Errorf("audit %d: %+v, want %+v", i, es[i], w)
		}
		if strings.Contains(es[i].Actor+es[i].Target, "s3cret") {
			t.Errorf("a token reached the audit log: %+v", es[i])
		}
	}
}

func TestClosedStatusNeedsToken(t *testing.T) {
	srv := NewServer(Tokens{"s3cret-token-0123456789": "alice"}, checkpointstest.New(), false, slog.Default())
	srv.Handle("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "ok") }), false)
	srv.HandlePublic("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "ok") }))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := &Client{Base: ts.URL, HTTP: http.DefaultClient}
	if err := c.Do(context.Background(), "GET", "/healthz", nil, nil); err != nil {
		t.Fatalf("a public route needs no token: %v", err)
	}
	if err := c.Do(context.Background(), "GET", "/v1/status", nil, nil); !IsUnauthorized(err) {
		t.Fatalf("closed status without token: %v", err)
	}
	c.Token = "s3cret-token-0123456789"
	if err := c.Do(context.Background(), "GET", "/v1/status", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestLoadTokensRejectsShortTokens(t *testing.T) {
	p := filepath.Join(t.TempDir(), "t")
	os.WriteFile(p, []byte("# ops\nalice:short\n"), 0o600)
	if _, err := LoadTokens(p); err == nil {
		t.Fatal("short token accepted")
	}
	os.WriteFile(p, []byte("# ops\nalice:0123456789abcdef0123\n\nbob: fedcba9876543210fedc\n"), 0o600)
	tk, err := LoadTokens(p)
	if err != nil || tk["0123456789abcdef0123"] != "alice" || tk["fedcba9876543210fedc"] != "bob" {
		t.Fatalf("%v %v", tk, err)
	}
}
