//go:build integration

package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/internal/testbed"
)

// TestIntegrationRoleMatrix runs the built daemon with every part that
// registers routes (reconcile and a rollout plan included), takes the route
// list from the daemon itself (GET /v1/whoami as admin) and calls each route
// with every role. Changes are sent without a reason, so an allowed one
// stops at 400 and nothing is done.
func TestIntegrationRoleMatrix(t *testing.T) {
	e := newDaemonEnv(t, "rol")
	prefix := testbed.UniqueName(t, "rol")
	addr := freeAddr(t)
	var lines []string
	for r, tok := range testbed.MatrixTokens {
		lines = append(lines, fmt.Sprintf("%s-user:%s:%s", r, tok, r))
	}
	if err := os.WriteFile(filepath.Join(e.dir, "matrix-tokens"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := e.config(addr, prefix, "", fmt.Sprintf(`rollout:
  version: roles-plan-1
  stages:
    - name: canary
      slice: {collections: [%[1]s], share: "10%%"}
      advance: manual
    - {name: all, slice: {collections: [%[1]s], share: "100%%"}, advance: manual}
`, e.ns))
	cfg = strings.Replace(cfg, "tokens_file: "+e.dir+"/tokens, open_status: true", "tokens_file: "+e.dir+"/matrix-tokens, open_status: false", 1)
	if !strings.Contains(cfg, "matrix-tokens") {
		t.Fatal("the config still names the default tokens")
	}
	path := filepath.Join(e.dir, "tidemark.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	testbed.RunDaemon(t, ctx, e.bin, "daemon", path)
	ac := &admin.Client{Base: "http://" + addr, Token: testbed.MatrixTokens[admin.RoleAdmin], HTTP: &http.Client{Timeout: 30 * time.Second}}
	var who admin.Whoami
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		err := ac.Do(ctx, "GET", "/v1/whoami", nil, &who)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not answer in 2 minutes: %v", err)
		}
	}
	if who.Role != admin.RoleAdmin || len(who.Allowed) != len(who.Routes) {
		t.Fatalf("whoami as admin: %+v", who)
	}
	seen := map[string]bool{}
	for _, r := range who.Routes {
		seen[r.Pattern] = true
	}
	// Every route of the matrix is registered by the full daemon.
	for p := range testbed.RoleMatrix {
		if !seen[p] {
			t.Errorf("the daemon does not register %s", p)
		}
	}
	testbed.CheckRoleMatrix(t, ac.Base, who.Routes, func() int {
		var es []map[string]any
		if err := ac.Do(ctx, "GET", "/v1/audit", nil, &es); err != nil {
			t.Fatal(err)
		}
		return len(es)
	})
}
