package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sync/errgroup"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/rollout"
)

// wantRoles is the role matrix: every route the daemon can register and the
// role it needs ("none" for public routes). A route registered but missing
// here fails TestEveryRouteHasItsRole.
var wantRoles = map[string]admin.Role{
	"GET /healthz": admin.RoleNone, "GET /readyz": admin.RoleNone, "GET /{$}": admin.RoleNone, "GET /ui/": admin.RoleNone,
	"GET /metrics": admin.RoleViewer, "GET /v1/status": admin.RoleViewer, "GET /v1/audit": admin.RoleViewer,
	"GET /v1/whoami": admin.RoleViewer, "GET /v1/leader": admin.RoleViewer, "GET /v1/plan": admin.RoleViewer,
	"GET /v1/route": admin.RoleViewer, "GET /v1/routes": admin.RoleViewer, "GET /v1/reports": admin.RoleViewer,
	"GET /v1/reports/{id}": admin.RoleViewer, "GET /v1/reconcile": admin.RoleViewer,
	"GET /v1/trace": admin.RoleViewer, "GET /v1/lag/history": admin.RoleViewer,
	"POST /v1/pause": admin.RoleOperator, "POST /v1/resume": admin.RoleOperator, "POST /v1/backfill": admin.RoleOperator,
	"POST /v1/reconcile": admin.RoleOperator, "POST /v1/repair": admin.RoleOperator,
	"POST /v1/plan/advance": admin.RoleOperator, "POST /v1/plan/resume": admin.RoleOperator,
	"POST /v1/rewind": admin.RoleAdmin, "POST /v1/plan/abort": admin.RoleAdmin, "POST /v1/plan/rollback": admin.RoleAdmin,
	"POST /v1/plan/drill": admin.RoleAdmin,
}

var matrixTokens = map[admin.Role]string{admin.RoleViewer: "matrix-viewer-0123456789", admin.RoleOperator: "matrix-operator-0123456789", admin.RoleAdmin: "matrix-admin-0123456789"}

// TestEveryRouteHasItsRole builds the daemon's admin server with every part
// that registers routes without servers (core, rollout, status page), takes
// the routes from the server itself, and calls each with every role. A
// change is sent without a reason, so an allowed call stops at "reason"
// (400) and nothing runs; a refused one answers 403 and is audited.
// TestIntegrationRoleMatrix does the same against a full daemon, with the
// reconcile routes.
func TestEveryRouteHasItsRole(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for r, tok := range matrixTokens {
		lines = append(lines, fmt.Sprintf("%s-user:%s:%s", r, tok, r))
	}
	os.WriteFile(filepath.Join(dir, "tokens"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	cfg := &Config{Admin: AdminConfig{TokensFile: filepath.Join(dir, "tokens")}}
	cfg.Rollout = newPlanFixtureConfig(t)
	store := checkpointstest.New()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	srv, err := newAdminServer(cfg, store, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: cfg, log: log, store: store, reg: reg, ready: make(chan struct{})}
	d.routes(srv, reg)
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	t.Cleanup(func() { cancel(); g.Wait() })
	for _, p := range daemonParts {
		if err := p.start(gctx, d, srv, g); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	checkRoleMatrix(t, ts.URL, srv.Routes(), func() int {
		es, _ := store.Audit(context.Background(), checkpoints.AuditFilter{})
		return len(es)
	})
}

// checkRoleMatrix calls every route with every caller and checks the answer
// against wantRoles. audited counts the audit entries so far.
func checkRoleMatrix(t *testing.T, base string, routes []admin.Route, audited func() int) {
	t.Helper()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered: %+v", len(routes), routes)
	}
	for _, rt := range routes {
		want, ok := wantRoles[rt.Pattern]
		if !ok {
			t.Errorf("route %s (needs %s) is not in the role matrix: give it a role on purpose (routeRoles) and add it to wantRoles", rt.Pattern, rt.Role)
			continue
		}
		if rt.Role != want {
			t.Errorf("route %s needs %s, want %s", rt.Pattern, rt.Role, want)
		}
		method, path, _ := strings.Cut(rt.Pattern, " ")
		path = strings.NewReplacer("{id}", "latest", "{$}", "").Replace(path)
		for _, caller := range []admin.Role{admin.RoleNone, admin.RoleViewer, admin.RoleOperator, admin.RoleAdmin} {
			before := audited()
			req, _ := http.NewRequest(method, base+path, strings.NewReader(`{}`))
			if tok := matrixTokens[caller]; tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := resp.StatusCode
			switch {
			case rt.Public:
				if got == 401 || got == 403 {
					t.Errorf("%s as %s: public route answered %d", rt.Pattern, caller, got)
				}
			case caller == admin.RoleNone:
				if got != 401 {
					t.Errorf("%s without a token: %d %s, want 401", rt.Pattern, got, body)
				}
			case caller < want:
				if got != 403 || !strings.Contains(string(body), "needs "+want.String()) {
					t.Errorf("%s as %s: %d %s, want 403 naming %s", rt.Pattern, caller, got, body, want)
				}
				if rt.Mutating && audited() != before+1 {
					t.Errorf("%s as %s: the refusal was not audited", rt.Pattern, caller)
				}
			case rt.Mutating:
				if got != 400 || !strings.Contains(string(body), "needs a reason") {
					t.Errorf("%s as %s: %d %s, want 400 for the missing reason (allowed, nothing run)", rt.Pattern, caller, got, body)
				}
			default:
				if got == 401 || got == 403 {
					t.Errorf("%s as %s: %d %s", rt.Pattern, caller, got, body)
				}
			}
		}
	}
}

// newPlanFixtureConfig is a two-stage plan, enough for the rollout part to
// register its routes.
func newPlanFixtureConfig(t *testing.T) rollout.Config {
	t.Helper()
	var cfg rollout.Config
	if err := yaml.Unmarshal([]byte(`
version: roles-v1
stages:
  - name: canary
    slice: {collections: [app.users], share: 5%}
    triggers: [{name: lag-halt, signal: lag_seconds, above: 60, for: 1m, action: halt}]
  - name: all
    slice: {collections: [app.users]}
`), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}
