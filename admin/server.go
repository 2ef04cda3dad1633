// Package admin is the daemon's authenticated HTTP API and the client the CLI
// uses. Every mutating call needs a bearer token and a reason, and is written
// to the audit log with who (the token's name), what, why, when and the result
// — refused calls included.
package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Tokens maps token values to their names. Names go to the audit log; token
// values never leave this process.
type Tokens map[string]string

// LoadTokens reads "name:token" lines; blank lines and # comments are skipped.
func LoadTokens(path string) (Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("admin: tokens file: %w", err)
	}
	defer f.Close()
	t := Tokens{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "" || len(strings.TrimSpace(tok)) < 16 {
			return nil, fmt.Errorf("admin: tokens file %s line %d: want name:token with a token of 16+ characters", path, n)
		}
		t[strings.TrimSpace(tok)] = strings.TrimSpace(name)
	}
	return t, sc.Err()
}

// name returns the token's name, comparing in constant time.
func (t Tokens) name(presented string) (string, bool) {
	for tok, name := range t {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(presented)) == 1 {
			return name, true
		}
	}
	return "", false
}

// Server routes the admin API.
type Server struct {
	mux        *http.ServeMux
	tokens     Tokens
	store      checkpoints.Store
	openStatus bool
	log        *slog.Logger
}

// NewServer returns a server whose mutating routes check tokens and audit to
// store. openStatus lets read-only routes answer without a token.
func NewServer(tokens Tokens, store checkpoints.Store, openStatus bool, log *slog.Logger) *Server {
	return &Server{mux: http.NewServeMux(), tokens: tokens, store: store, openStatus: openStatus, log: log}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// HandlePublic mounts h with no token check, for what holds no data: the
// status page's own files, and the health probes Kubernetes calls without a
// token. Never use it for an API route.
func (s *Server) HandlePublic(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handle mounts h. Mutating routes require a token and a reason and are audited.
func (s *Server) Handle(pattern string, h http.Handler, mutating bool) {
	if !mutating {
		s.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !s.openStatus {
				if _, ok := s.actor(r); !ok {
					WriteError(w, http.StatusUnauthorized, errors.New("a bearer token is required (set TIDEMARK_TOKEN or --token-file)"))
					return
				}
			}
			h.ServeHTTP(w, r)
		}))
		return
	}
	s.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var meta struct {
			Reason string `json:"reason"`
		}
		json.Unmarshal(body, &meta)
		entry := checkpoints.AuditEntry{Time: time.Now().UTC(), Action: r.Method + " " + r.URL.Path, Reason: meta.Reason,
			Target: r.URL.RawQuery, Details: map[string]any{"request": json.RawMessage(orEmpty(body)), "remote": r.RemoteAddr}}
		actor, ok := s.actor(r)
		switch {
		case !ok:
			entry.Actor, entry.Result = actor, "refused: not authenticated"
			s.audit(r.Context(), entry)
			WriteError(w, http.StatusUnauthorized, errors.New("a valid bearer token is required for changes; this attempt was audited"))
			return
		case strings.TrimSpace(meta.Reason) == "":
			entry.Actor, entry.Result = actor, "refused: no reason"
			s.audit(r.Context(), entry)
			WriteError(w, http.StatusBadRequest, errors.New(`every change needs a reason: add "reason" (--reason on the CLI)`))
			return
		}
		entry.Actor = actor
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r.WithContext(WithActor(r.Context(), actor)))
		entry.Result = "ok"
		if rec.code >= 400 {
			entry.Result = fmt.Sprintf("failed: HTTP %d %s", rec.code, strings.TrimSpace(rec.errText))
		}
		s.audit(r.Context(), entry)
	}))
}

func orEmpty(b []byte) []byte {
	if len(bytes.TrimSpace(b)) == 0 || !json.Valid(b) {
		return []byte("null")
	}
	return b
}

func (s *Server) audit(ctx context.Context, e checkpoints.AuditEntry) {
	if err := s.store.Append(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("cannot write the audit log", "action", e.Action, "err", err)
	}
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

type statusRecorder struct {
	http.ResponseWriter
	code    int
	errText string
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code >= 400 && len(r.errText) < 300 {
		r.errText += string(b)
	}
	return r.ResponseWriter.Write(b)
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
