package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"golang.org/x/time/rate"
)

var roleTokens = map[Role]string{RoleViewer: "viewer-token-0123456789", RoleOperator: "operator-token-0123456789", RoleAdmin: "admin-token-0123456789"}

func roleServer(t *testing.T, store checkpoints.Store, opts ...Option) (*Server, *atomic.Int64) {
	t.Helper()
	tokens, roles := Tokens{}, Roles{}
	for r, tok := range roleTokens {
		tokens[tok] = r.String() + "-user"
		roles[r.String()+"-user"] = r
	}
	srv := NewServer(tokens, store, false, slog.New(slog.DiscardHandler),
		append([]Option{WithRoles(roles), WithRouteRoles(map[string]Role{"POST /v1/pause": RoleOperator})}, opts...)...)
	calls := &atomic.Int64{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		WriteJSON(w, 200, map[string]string{"actor": Actor(r.Context())})
	})
	srv.Handle("GET /v1/status", h, false)
	srv.Handle("POST /v1/pause", h, true)
	srv.Handle("POST /v1/rewind", h, true) // not in the route roles: admin
	srv.HandleRole("POST /v1/backfill", h, true, RoleOperator)
	srv.HandlePublic("GET /healthz", h)
	return srv, calls
}

// TestRoleMatrix calls every route the server has registered with every
// kind of caller and checks each answer against the route's role: refused
// with 403 (and audited) below it, served at or above it.
func TestRoleMatrix(t *testing.T) {
	store := checkpointstest.New()
	srv, calls := roleServer(t, store)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	want := map[string]Role{"GET /v1/whoami": RoleViewer, "GET /v1/status": RoleViewer, "POST /v1/pause": RoleOperator,
		"POST /v1/rewind": RoleAdmin, "POST /v1/backfill": RoleOperator, "GET /healthz": RoleNone}
	routes := srv.Routes()
	if len(routes) != len(want) {
		t.Fatalf("routes %+v, want %v", routes, want)
	}
	callers := []Role{RoleNone, RoleViewer, RoleOperator, RoleAdmin}
	for _, rt := range routes {
		if w, ok := want[rt.Pattern]; !ok || w != rt.Role {
			t.Errorf("route %s needs %s, want %s", rt.Pattern, rt.Role, w)
		}
		method, path, _ := strings.Cut(rt.Pattern, " ")
		for _, caller := range callers {
			t.Run(fmt.Sprintf("%s/%s", rt.Pattern, caller), func(t *testing.T) {
				before, audited := calls.Load(), len(mustAudit(t, store))
				req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(`{"reason":"matrix"}`))
				if tok := roleTokens[caller]; tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				wantCode := 200
				switch {
				case rt.Public:
				case caller == RoleNone:
					wantCode = 401
				case caller < rt.Role:
					wantCode = 403
				}
				if resp.StatusCode != wantCode {
					t.Fatalf("HTTP %d %s, want %d", resp.StatusCode, body, wantCode)
				}
				ran := calls.Load() - before
				if served := wantCode == 200 && rt.Pattern != "GET /v1/whoami"; ran != map[bool]int64{true: 1, false: 0}[served] {
					t.Fatalf("handler ran %d times", ran)
				}
				if !rt.Mutating {
					return
				}
				es := mustAudit(t, store)[audited:]
				switch wantCode {
				case 403:
					if len(es) != 1 || es[0].Result != fmt.Sprintf("refused: role %s, needs %s", caller, rt.Role) || es[0].Actor != caller.String()+"-user" {
						t.Fatalf("a refusal by role is audited once with the roles: %+v", es)
					}
					if !strings.Contains(string(body), "needs "+rt.Role.String()) {
						t.Fatalf("the answer does not name the role needed: %s", body)
					}
				case 200:
					if len(es) != 2 || es[0].Result != "started" || es[1].Result != "ok" || es[1].Reason != "matrix" {
						t.Fatalf("an allowed change is audited as started, then ok: %+v", es)
					}
				}
			})
		}
	}
}

func mustAudit(t *testing.T, s checkpoints.Store) []checkpoints.AuditEntry {
	t.Helper()
	es, err := s.Audit(context.Background(), checkpoints.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func TestWhoamiSaysWhatTheRoleMayCall(t *testing.T) {
	srv, _ := roleServer(t, checkpointstest.New())
	ts := httptest.NewServer(srv)
	defer ts.Close()
	for caller, allowed := range map[Role]string{
		RoleViewer:   "GET /healthz GET /v1/status GET /v1/whoami",
		RoleOperator: "GET /healthz GET /v1/status GET /v1/whoami POST /v1/backfill POST /v1/pause",
		RoleAdmin:    "GET /healthz GET /v1/status GET /v1/whoami POST /v1/backfill POST /v1/pause POST /v1/rewind",
	} {
		c := &Client{Base: ts.URL, Token: roleTokens[caller], HTTP: http.DefaultClient}
		var w Whoami
		if err := c.Do(context.Background(), "GET", "/v1/whoami", nil, &w); err != nil {
			t.Fatal(err)
		}
		if w.Role != caller || w.Name != caller.String()+"-user" || strings.Join(sorted(w.Allowed), " ") != allowed {
			t.Errorf("%s: %+v, want allowed %s", caller, w, allowed)
		}
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestRefusedRequestsCannotFillTheAuditLog sends twenty anonymous changes
// with 900 KB bodies: the log keeps a digest and a short prefix of the first
// few, counts the rest, and stays small.
func TestRefusedRequestsCannotFillTheAuditLog(t *testing.T) {
	store := checkpointstest.New()
	reg := prometheus.NewRegistry()
	srv, calls := roleServer(t, store, WithRefusalRate(time.Hour, 3), WithRegisterer(reg))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	big := `{"reason":"` + strings.Repeat("x", 900<<10) + `"}`
	for i := 0; i < 20; i++ {
		resp, err := http.Post(ts.URL+"/v1/pause", "application/json", strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("HTTP %d, want 401", resp.StatusCode)
		}
	}
	es := mustAudit(t, store)
	if len(es) != 3 {
		t.Fatalf("%d audit entries for 20 refusals from one address, want 3 (the burst)", len(es))
	}
	size := 0
	for _, e := range es {
		b, _ := jsonMarshal(e)
		size += len(b)
		if e.Details["request_sha256"] == "" || len(e.Details["request_prefix"].(string)) != refusedPrefix || e.Details["request_bytes"] != len(big) || e.Reason != "" {
			t.Fatalf("a refused request is kept as digest, size and a %d-byte prefix: %+v", refusedPrefix, e.Details)
		}
	}
	if size > 4<<10 {
		t.Fatalf("the audit log holds %d bytes for 20 refused requests", size)
	}
	if n := testutil.ToFloat64(srv.unaudited); n != 17 {
		t.Fatalf("tidemark_admin_refusals_unaudited_total = %v, want 17", n)
	}
	if n := testutil.ToFloat64(srv.refusals.WithLabelValues("unauthenticated")); n != 20 {
		t.Fatalf("refusals counted %v, want 20", n)
	}
	// Another address has its own share; the first one's next audited
	// refusal says how many were left out.
	srv.mu.Lock()
	for _, g := range srv.clients {
		g.lim.SetLimit(rate.Inf)
	}
	srv.mu.Unlock()
	resp, _ := http.Post(ts.URL+"/v1/pause", "application/json", strings.NewReader(`{"reason":"again"}`))
	resp.Body.Close()
	if es := mustAudit(t, store); len(es) != 4 || es[3].Details["suppressed_before"] != 17 {
		t.Fatalf("the next entry counts the 17 left out: %+v", es[len(es)-1])
	}
	if calls.Load() != 0 {
		t.Fatal("a refused change ran")
	}
}

func TestBodyLimitAndMalformedJSON(t *testing.T) {
	store := checkpointstest.New()
	srv, calls := roleServer(t, store)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := &Client{Base: ts.URL, Token: roleTokens[RoleAdmin], HTTP: http.DefaultClient}
	post := func(body string) (int, string) {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/pause", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"reason":"` + strings.Repeat("y", MaxBody) + `"}`, 413, "request body over 1048576 bytes"},
		{`{"reason": "x",}`, 400, "not valid JSON (at byte 16): invalid character '}'"},
		{`{"reason": "x"`, 400, "unexpected end of JSON input"},
		{`["reason"]`, 400, "cannot unmarshal array"},
		{`{"reason": 7}`, 400, "cannot unmarshal number into Go struct field .reason of type string"},
		{`{}`, 400, "every change needs a reason"},
	} {
		code, body := post(tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%.40s: HTTP %d %s, want %d %q", tc.body, code, body, tc.code, tc.want)
		}
	}
	if calls.Load() != 0 {
		t.Fatal("a refused change ran")
	}
	for _, e := range mustAudit(t, store) {
		if !strings.HasPrefix(e.Result, "refused: ") {
			t.Errorf("not audited as refused: %+v", e)
		}
	}
}

// failingAudit is a store whose audit log cannot be written.
type failingAudit struct {
	*checkpointstest.Memory
	mu    sync.Mutex
	delay time.Duration
	fail  bool
}

func (f *failingAudit) Append(ctx context.Context, e checkpoints.AuditEntry) error {
	f.mu.Lock()
	fail, delay := f.fail, f.delay
	f.mu.Unlock()
	if fail {
		return errors.New("brokers unreachable")
	}
	time.Sleep(delay) // a Kafka round trip
	return f.Memory.Append(ctx, e)
}

func TestChangeIsAuditedBeforeItIsReportedAndRefusedWithoutAudit(t *testing.T) {
	store := &failingAudit{Memory: checkpointstest.New(), fail: true}
	srv, calls := roleServer(t, store)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tok"), []byte("admin-user:"+roleTokens[RoleAdmin]+":admin\n"), 0o600)
	c, _ := NewClient(ts.URL, filepath.Join(dir, "tok"))
	err := c.Do(context.Background(), "POST", "/v1/pause", map[string]string{"reason": "r"}, nil)
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != 503 || !strings.Contains(he.Msg, "audit log cannot be written") || calls.Load() != 0 {
		t.Fatalf("a change that cannot be audited must be refused before it runs: %v (ran %d)", err, calls.Load())
	}
	store.mu.Lock()
	store.fail, store.delay = false, 30*time.Millisecond
	store.mu.Unlock()
	if err := c.Do(context.Background(), "POST", "/v1/pause", map[string]string{"reason": "r"}, nil); err != nil {
		t.Fatal(err)
	}
	// No wait: the answer came after the result was in the log.
	es := mustAudit(t, store)
	if len(es) != 2 || es[1].Result != "ok" {
		t.Fatalf("the result is audited before the answer: %+v", es)
	}
}

func TestLoadTokenFileRoles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "t")
	write := func(s string) { os.WriteFile(p, []byte(s), 0o600) }
	write("# ops\nalice:0123456789abcdef0123:viewer\nbob: fedcba9876543210fedc : operator\ncarol:aaaaaaaaaaaaaaaaaaaa\n")
	tf, err := LoadTokenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if tf.Roles["alice"] != RoleViewer || tf.Roles["bob"] != RoleOperator || tf.Roles["carol"] != RoleAdmin ||
		tf.Tokens["fedcba9876543210fedc"] != "bob" || strings.Join(tf.Unroled, ",") != "carol" {
		t.Fatalf("%+v", tf)
	}
	for _, bad := range []struct{ file, want string }{
		{"alice:0123456789abcdef0123:root\n", `unknown role "root"`},
		{"alice:short:admin\n", "malformed line"},
		{"alice:0123456789abcdef0123:admin:x\n", "malformed line"},
		{"alice:0123456789abcdef0123:admin\nbob:0123456789abcdef0123:viewer\n", "already listed"},
		{"alice:0123456789abcdef0123:admin\nalice:0123456789abcdef9999:viewer\n", "already has role admin"},
	} {
		write(bad.file)
		if _, err := LoadTokenFile(p); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.file, err, bad.want)
		}
	}
	for line, want := range map[string]string{"a:0123456789abcdef0123:viewer": "0123456789abcdef0123", "a:0123456789abcdef0123": "0123456789abcdef0123", "0123456789abcdef0123": "0123456789abcdef0123"} {
		if got := tokenOf(line); got != want {
			t.Errorf("tokenOf(%q) = %q", line, got)
		}
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
