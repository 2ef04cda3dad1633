package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sync/errgroup"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/rollout"
)

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
	for r, tok := range testbed.MatrixTokens {
		lines = append(lines, fmt.Sprintf("%s-user:%s:%s", r, tok, r))
	}
	os.WriteFile(filepath.Join(dir, "tokens"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	cfg := &config.Config{Admin: config.AdminConfig{TokensFile: filepath.Join(dir, "tokens")}}
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
	if err := d.startParts(gctx, srv, g); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	testbed.CheckRoleMatrix(t, ts.URL, srv.Routes(), func() int {
		es, _ := store.Audit(context.Background(), checkpoints.AuditFilter{})
		return len(es)
	})
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
