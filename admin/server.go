// Package admin is the daemon's authenticated HTTP API and the client the CLI
// uses. Every route needs a role (viewer, operator, admin); every mutating call
// needs a bearer token of that role and a reason, and is written to the audit
// log with who (the token's name), what, why, when and the result — refused
// calls included, as a digest of their body and at a bounded rate per client.
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"golang.org/x/time/rate"
)

// MaxBody bounds a request body; a longer one is answered 413 and not read.
const MaxBody = 1 << 20

// refusedPrefix is how much of a refused request's body the audit log keeps,
// beside the body's SHA-256: enough to recognise a request, too little for
// anonymous callers to fill the log.
const refusedPrefix = 256

// Route is one registered route and the role it needs.
type Route struct {
	Pattern  string `json:"pattern"`
	Role     Role   `json:"role"` // "none" for public routes
	Mutating bool   `json:"mutating"`
	Public   bool   `json:"public,omitempty"`
}

// Option configures NewServer.
type Option func(*Server)

// WithRoles gives token names their roles. A name it does not list is an
// admin: what every token could do before roles existed.
func WithRoles(r Roles) Option { return func(s *Server) { s.roles = r } }

// WithRouteRoles sets the role each mutating route needs, by pattern.
// Mutating routes it does not list need RoleAdmin; read routes need
// RoleViewer.
func WithRouteRoles(m map[string]Role) Option { return func(s *Server) { s.routeRoles = m } }

// WithRefusalRate bounds how many refused calls per caller reach the
// audit log: burst at once, then one per every. Default 20, then one per 3s.
func WithRefusalRate(every time.Duration, burst int) Option {
	return func(s *Server) { s.refusalEvery, s.refusalBurst = every, burst }
}

// WithRegisterer registers the server's metrics.
func WithRegisterer(r prometheus.Registerer) Option { return func(s *Server) { s.reg = r } }

// Server routes the admin API.
type Server struct {
	mux          *http.ServeMux
	tokens       Tokens
	roles        Roles
	routeRoles   map[string]Role
	store        checkpoints.Store
	openStatus   bool
	log          *slog.Logger
	reg          prometheus.Registerer
	refusalEvery time.Duration
	refusalBurst int
	refusals     *prometheus.CounterVec // by reason
	unaudited    prometheus.Counter     // refusals the rate limit kept out of the log

	mu      sync.Mutex
	routes  []Route                 // guarded by mu
	clients map[string]*refusalGate // by client address; guarded by mu
}

// refusalGate rate-limits one client address's refused calls in the audit
// log and counts what it kept out, for the next entry that gets in.
type refusalGate struct {
	lim        *rate.Limiter
	suppressed int
}

// maxClients bounds the per-address table; past it the table starts over
// (an attacker with that many addresses is still bounded by the limiter of
// each new one, and by the metric).
const maxClients = 4096

// NewServer returns a server whose routes check tokens and roles and whose
// mutating routes audit to store. openStatus lets read-only routes answer
// without a token.
func NewServer(tokens Tokens, store checkpoints.Store, openStatus bool, log *slog.Logger, opts ...Option) *Server {
	s := &Server{mux: http.NewServeMux(), tokens: tokens, store: store, openStatus: openStatus, log: log,
		refusalEvery: 3 * time.Second, refusalBurst: 20, clients: map[string]*refusalGate{}}
	for _, o := range opts {
		o(s)
	}
	s.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_admin_refused_requests_total",
		Help: "Admin API calls refused, by reason (unauthenticated, forbidden, too_large, bad_request)."}, []string{"reason"})
	s.unaudited = prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_admin_refusals_unaudited_total",
		Help: "Refused admin API calls the per-address rate limit kept out of the audit log (the next entry from that address counts them)."})
	if s.reg != nil {
		s.reg.MustRegister(s.refusals, s.unaudited)
	}
	s.Handle("GET /v1/whoami", http.HandlerFunc(s.whoami), false)
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Routes lists every registered route, in registration order.
func (s *Server) Routes() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Route(nil), s.routes...)
}

func (s *Server) add(rt Route, h http.Handler) {
	s.mu.Lock()
	s.routes = append(s.routes, rt)
	s.mu.Unlock()
	s.mux.Handle(rt.Pattern, h)
}

// HandlePublic mounts h with no token check, for what holds no data: the
// status page's own files, and the health probes Kubernetes calls without a
// token. Never use it for an API route.
func (s *Server) HandlePublic(pattern string, h http.Handler) {
	s.add(Route{Pattern: pattern, Public: true}, h)
}

// Handle mounts h. Read routes need RoleViewer (or nothing with open
// status); mutating routes need the role WithRouteRoles gives them, else
// RoleAdmin, and a reason, and are audited.
func (s *Server) Handle(pattern string, h http.Handler, mutating bool) {
	need := RoleViewer
	if mutating {
		need = RoleAdmin
		if r, ok := s.routeRoles[pattern]; ok {
			need = r
		}
	}
	s.HandleRole(pattern, h, mutating, need)
}

// HandleRole mounts h needing role need.
func (s *Server) HandleRole(pattern string, h http.Handler, mutating bool, need Role) {
	if need < RoleViewer {
		panic("admin: route " + pattern + " needs a role; use HandlePublic for routes that hold no data")
	}
	rt := Route{Pattern: pattern, Role: need, Mutating: mutating}
	if mutating {
		s.add(rt, s.mutating(need, h))
		return
	}
	s.add(rt, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, authed := s.actor(r)
		switch role := s.roleOf(name, authed); {
		case !authed && !(s.openStatus && need == RoleViewer):
			s.refusals.WithLabelValues("unauthenticated").Inc()
			WriteError(w, http.StatusUnauthorized, errors.New("a bearer token is required (set TIDEMARK_TOKEN or --token-file)"))
		case authed && role < need:
			s.refusals.WithLabelValues("forbidden").Inc()
			WriteError(w, http.StatusForbidden, fmt.Errorf("%s has role %s; %s needs %s", name, role, pattern, need))
		default:
			h.ServeHTTP(w, r)
		}
	}))
}

func (s *Server) roleOf(name string, authed bool) Role {
	if !authed {
		return RoleNone
	}
	if r, ok := s.roles[name]; ok {
		return r
	}
	return RoleAdmin
}

// Whoami is GET /v1/whoami: the caller's name and role, and what it may call,
// so that a client (the status page) shows only what the role can use.
type Whoami struct {
	Name   string  `json:"name"`
	Role   Role    `json:"role"`
	Routes []Route `json:"routes"`
	// Allowed lists the patterns of Routes this caller may call.
	Allowed []string `json:"allowed"`
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	name, authed := s.actor(r)
	role := s.roleOf(name, authed)
	out := Whoami{Name: name, Role: role, Routes: s.Routes(), Allowed: []string{}}
	for _, rt := range out.Routes {
		if rt.Public || role >= rt.Role || !rt.Mutating && s.openStatus && rt.Role == RoleViewer {
			out.Allowed = append(out.Allowed, rt.Pattern)
		}
	}
	WriteJSON(w, http.StatusOK, out)
}

// mutating wraps h: body limit, token, role, well-formed JSON, a reason, and
// the audit log. The call is audited as started before h runs, and h is not
// run if that entry cannot be written; h's answer is held back until its
// result is audited.
func (s *Server) mutating(need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithoutCancel(r.Context())
		entry := checkpoints.AuditEntry{Time: time.Now().UTC(), Action: r.Method + " " + r.URL.Path, Target: r.URL.RawQuery}
		name, authed := s.actor(r)
		role := s.roleOf(name, authed)
		entry.Actor = name
		body, err := readBody(w, r)
		var meta struct {
			Reason string `json:"reason"`
		}
		jsonErr := error(nil)
		// An unauthenticated body is parsed only when small, for its
		// reason: parsing a megabyte per anonymous call costs more than
		// the reason is worth.
		if err == nil && len(bytes.TrimSpace(body)) > 0 && (authed || len(body) <= 4<<10) {
			if jsonErr = json.Unmarshal(body, &meta); jsonErr != nil {
				var se *json.SyntaxError
				if errors.As(jsonErr, &se) {
					jsonErr = fmt.Errorf("request body is not valid JSON (at byte %d): %w", se.Offset, jsonErr)
				} else {
					jsonErr = fmt.Errorf("request body: %w", jsonErr)
				}
			}
		}
		refuse := func(code int, metric, result string, err error) {
			s.refusals.WithLabelValues(metric).Inc()
			entry.Result = "refused: " + result
			entry.Reason = truncate(meta.Reason, refusedPrefix)
			sum := sha256.Sum256(body)
			entry.Details = map[string]any{"remote": r.RemoteAddr, "request_bytes": len(body),
				"request_sha256": hex.EncodeToString(sum[:]), "request_prefix": truncate(string(body), refusedPrefix)}
			if len(body) == 0 && r.ContentLength > 0 {
				entry.Details["request_bytes"] = r.ContentLength // not read: over the limit
			}
			s.auditRefusal(ctx, refusalKey(r, name, authed), entry)
			WriteError(w, code, err)
		}
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			refuse(http.StatusRequestEntityTooLarge, "too_large", "body over the limit",
				fmt.Errorf("request body over %d bytes; admin calls are small JSON objects", MaxBody))
		case err != nil:
			refuse(http.StatusBadRequest, "bad_request", "body unreadable", fmt.Errorf("request body: %w", err))
		case !authed:
			refuse(http.StatusUnauthorized, "unauthenticated", "not authenticated",
				errors.New("a valid bearer token is required for changes; this attempt was audited"))
		case role < need:
			refuse(http.StatusForbidden, "forbidden", fmt.Sprintf("role %s, needs %s", role, need),
				fmt.Errorf("%s has role %s; %s needs %s (this attempt was audited)", name, role, entry.Action, need))
		case jsonErr != nil:
			refuse(http.StatusBadRequest, "bad_request", "malformed JSON", jsonErr)
		case strings.TrimSpace(meta.Reason) == "":
			refuse(http.StatusBadRequest, "bad_request", "no reason", errors.New(`every change needs a reason: add "reason" (--reason on the CLI)`))
		default:
			s.run(ctx, w, r, h, entry, body, meta.Reason)
		}
	})
}

func (s *Server) run(ctx context.Context, w http.ResponseWriter, r *http.Request, h http.Handler, entry checkpoints.AuditEntry, body []byte, reason string) {
	entry.Reason = reason
	started := entry
	started.Result = "started"
	started.Details = map[string]any{"request": json.RawMessage(orEmpty(body)), "remote": r.RemoteAddr}
	if err := s.store.Append(ctx, started); err != nil {
		s.log.Error("admin: change refused: cannot write the audit log", "action", entry.Action, "actor", entry.Actor, "err", err)
		WriteError(w, http.StatusServiceUnavailable, fmt.Errorf("not done: the audit log cannot be written (%v); no change is made unaudited", err))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &heldResponse{header: http.Header{}, code: http.StatusOK}
	h.ServeHTTP(rec, r.WithContext(WithActor(r.Context(), entry.Actor)))
	entry.Time = time.Now().UTC()
	entry.Result = "ok"
	if rec.code >= 400 {
		entry.Result = fmt.Sprintf("failed: HTTP %d %s", rec.code, strings.TrimSpace(truncate(rec.body.String(), 300)))
	}
	entry.Details = map[string]any{"request": json.RawMessage(orEmpty(body)), "remote": r.RemoteAddr}
	if err := s.store.Append(ctx, entry); err != nil {
		// The change is made and its start is in the log; say so rather
		// than report plain success.
		s.log.Error("admin: cannot write the audit log", "action", entry.Action, "actor", entry.Actor, "err", err)
		rec.header.Set("Tidemark-Audit", "result not written: "+err.Error())
	}
	rec.send(w)
}

// readBody reads at most MaxBody bytes of r's body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBody {
		return nil, &http.MaxBytesError{Limit: MaxBody}
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
}

// refusalKey is whose share of the audit log a refusal uses: the token's name
// when it is valid (one token cannot crowd out another's refusals from the
// same proxy address), else the client address.
func refusalKey(r *http.Request, name string, authed bool) string {
	if authed {
		return "token:" + name
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "addr:" + host
}

// auditRefusal writes e unless the caller (see refusalKey) used up its
// share; the entries it keeps out are counted in the next one that gets in.
func (s *Server) auditRefusal(ctx context.Context, host string, e checkpoints.AuditEntry) {
	s.mu.Lock()
	g := s.clients[host]
	if g == nil {
		if len(s.clients) >= maxClients {
			s.clients = map[string]*refusalGate{}
		}
		g = &refusalGate{lim: rate.NewLimiter(rate.Every(s.refusalEvery), s.refusalBurst)}
		s.clients[host] = g
	}
	allow := g.lim.Allow()
	suppressed := g.suppressed
	if allow {
		g.suppressed = 0
	} else {
		g.suppressed++
	}
	s.mu.Unlock()
	if !allow {
		s.unaudited.Inc()
		return
	}
	if suppressed > 0 {
		e.Details["suppressed_before"] = suppressed
	}
	if err := s.store.Append(ctx, e); err != nil {
		s.log.Error("admin: cannot write the audit log", "action", e.Action, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func orEmpty(b []byte) []byte {
	if len(bytes.TrimSpace(b)) == 0 || !json.Valid(b) {
		return []byte("null")
	}
	return b
}

// actor names the caller: the token's name, or "anonymous"/"invalid-token".
func (s *Server) actor(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, found := strings.CutPrefix(h, "Bearer ")
	if !found || tok == "" {
		return "anonymous", false
	}
	if name, ok := s.tokens.name(tok); ok {
		return name, true
	}
	return "invalid-token", false
}

// heldResponse keeps a handler's answer until its result is audited.
type heldResponse struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (h *heldResponse) Header() http.Header { return h.header }

func (h *heldResponse) WriteHeader(code int) {
	if !h.wrote {
		h.code, h.wrote = code, true
	}
}

func (h *heldResponse) Write(b []byte) (int, error) {
	h.wrote = true
	return h.body.Write(b)
}

func (h *heldResponse) send(w http.ResponseWriter) {
	for k, v := range h.header {
		w.Header()[k] = v
	}
	w.WriteHeader(h.code)
	w.Write(h.body.Bytes())
}

type actorKey struct{}

// WithActor records the authenticated caller in ctx.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// Actor is the authenticated caller recorded in ctx.
func Actor(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// WriteJSON writes v with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteError writes {"error": "..."}.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, map[string]string{"error": err.Error()})
}
