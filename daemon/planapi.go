package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/rollout"
	"go.mongodb.org/mongo-driver/bson"
)

// MountPlan serves the plan and route endpoints of e on srv.
func MountPlan(srv *admin.Server, e *rollout.Engine) {
	h := &planAPI{e: e}
	srv.Handle("GET /v1/plan", http.HandlerFunc(h.status), false)
	srv.Handle("GET /v1/route", http.HandlerFunc(h.route), false)
	srv.Handle("GET /v1/routes", http.HandlerFunc(h.routes), false)
	srv.Handle("POST /v1/plan/advance", http.HandlerFunc(h.advance), true)
	srv.Handle("POST /v1/plan/abort", http.HandlerFunc(h.abort), true)
	srv.Handle("POST /v1/plan/rollback", http.HandlerFunc(h.rollback), true)
	srv.Handle("POST /v1/plan/resume", http.HandlerFunc(h.resume), true)
	srv.Handle("POST /v1/plan/drill", http.HandlerFunc(h.drill), true)
}

// planAPI serves the plan and route endpoints.
type planAPI struct{ e *rollout.Engine }

func (h *planAPI) status(w http.ResponseWriter, r *http.Request) {
	admin.WriteJSON(w, 200, h.e.Status())
}

func (h *planAPI) routes(w http.ResponseWriter, r *http.Request) {
	admin.WriteJSON(w, 200, h.e.Routes())
}

func (h *planAPI) route(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ns, id := q.Get("collection"), q.Get("id")
	if ns == "" || id == "" {
		admin.WriteError(w, 400, errors.New(`collection (db.collection) and id are required; id is an extended JSON value: 42, "abc", {"$oid":"..."}`))
		return
	}
	key, err := parseIDKey(id)
	if err != nil {
		admin.WriteError(w, 400, err)
		return
	}
	rt := h.e.Routes()
	admin.WriteJSON(w, 200, RouteAnswer{Collection: ns, ID: id, Route: rt.Route(ns, key), Bucket: rollout.Bucket(key),
		Stage: rt.Stage, Generation: rt.Generation})
}

// parseIDKey reads an _id in extended JSON (42, "abc", {"$oid": "..."}) and
// returns its envelope key; a bare word that is not JSON is taken as a string.
func parseIDKey(s string) ([]byte, error) {
	var d bson.D
	if err := bson.UnmarshalExtJSON([]byte(`{"v":`+s+`}`), false, &d); err != nil {
		if strings.ContainsAny(s, `{}[]"`) {
			return nil, fmt.Errorf("id %s: %w", s, err)
		}
		d = bson.D{{Key: "v", Value: s}}
	}
	raw, err := bson.Marshal(d)
	if err != nil {
		return nil, err
	}
	return envelope.Key(bson.Raw(raw).Lookup("v")), nil
}

func (h *planAPI) read(w http.ResponseWriter, r *http.Request) (PlanRequest, bool) {
	var req PlanRequest
	if err := decode(r, &req); err != nil {
		admin.WriteError(w, 400, err)
		return req, false
	}
	return req, true
}

func planError(w http.ResponseWriter, err error) {
	code := 500
	switch {
	case errors.Is(err, rollout.ErrRefused):
		code = http.StatusConflict
	case errors.Is(err, rollout.ErrUnknownTrigger):
		code = http.StatusNotFound
	}
	admin.WriteError(w, code, err)
}

func (h *planAPI) answer(w http.ResponseWriter, st rollout.Status, err error) {
	if err != nil {
		planError(w, err)
		return
	}
	admin.WriteJSON(w, 200, st)
}

func (h *planAPI) advance(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Advance(r.Context(), admin.Actor(r.Context()), req.Reason, req.Force)
		h.answer(w, st, err)
	}
}

func (h *planAPI) abort(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Abort(r.Context(), admin.Actor(r.Context()), req.Reason)
		h.answer(w, st, err)
	}
}

func (h *planAPI) rollback(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Rollback(r.Context(), admin.Actor(r.Context()), req.Reason, req.Hard)
		h.answer(w, st, err)
	}
}

func (h *planAPI) resume(w http.ResponseWriter, r *http.Request) {
	if req, ok := h.read(w, r); ok {
		st, err := h.e.Resume(r.Context(), admin.Actor(r.Context()), req.Reason)
		h.answer(w, st, err)
	}
}

func (h *planAPI) drill(w http.ResponseWriter, r *http.Request) {
	req, ok := h.read(w, r)
	if !ok {
		return
	}
	if req.Trigger == "" {
		admin.WriteError(w, 400, errors.New("trigger is required (see `tidemark plan status` for the current stage's triggers)"))
		return
	}
	// A drill outlives a dropped connection: stopping it halfway would leave
	// the action in place without its restore.
	rep, err := h.e.Drill(context.WithoutCancel(r.Context()), admin.Actor(r.Context()), req.Reason, req.Trigger)
	if err != nil && rep.ID == "" {
		planError(w, err)
		return
	}
	// A failed drill is a finding, not a failed request: the report says
	// which step failed, and the engine audited it.
	admin.WriteJSON(w, 200, rep)
}
