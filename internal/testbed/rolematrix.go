package testbed

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tidemarkhq/tidemark/admin"
)

// The daemon's role matrix, shared by the daemon package's unit test (its
// admin server built in-process) and cmd/tidemark's integration test (a
// real daemon): what each route needs is written once.

// RoleMatrix is the role matrix: every route the daemon can register and the
// role it needs ("none" for public routes). A route registered but missing
// here fails TestEveryRouteHasItsRole.
var RoleMatrix = map[string]admin.Role{
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

// MatrixTokens are the tokens of CheckRoleMatrix's callers, one per role.
var MatrixTokens = map[admin.Role]string{admin.RoleViewer: "matrix-viewer-0123456789", admin.RoleOperator: "matrix-operator-0123456789", admin.RoleAdmin: "matrix-admin-0123456789"}

// CheckRoleMatrix calls every route with every caller and checks the answer
// against RoleMatrix. audited counts the audit entries so far.
func CheckRoleMatrix(t *testing.T, base string, routes []admin.Route, audited func() int) {
	t.Helper()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered: %+v", len(routes), routes)
	}
	for _, rt := range routes {
		want, ok := RoleMatrix[rt.Pattern]
		if !ok {
			t.Errorf("route %s (needs %s) is not in the role matrix: give it a role on purpose (routeRoles) and add it to RoleMatrix", rt.Pattern, rt.Role)
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
			if tok := MatrixTokens[caller]; tok != "" {
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
