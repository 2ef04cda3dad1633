package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
)

// leaderKey holds the elected leader's LeaderRecord.
const leaderKey = checkpoints.PrefixLeader + "current"

// LeaderRecord is what the elected leader stores, so that any daemon can
// name it (plan commands go to the leader).
type LeaderRecord struct {
	Identity string    `json:"identity"` // host/pid
	Admin    string    `json:"admin"`    // its admin.listen
	Since    time.Time `json:"since"`
}

// LeaderInfo is the answer of GET /v1/leader.
type LeaderInfo struct {
	Election bool          `json:"election"`
	Leading  bool          `json:"leading"` // this daemon
	Leader   *LeaderRecord `json:"leader,omitempty"`
}

// recordLeadership stores and audits every change of this daemon's role
// until ctx ends.
func (d *daemon) recordLeadership(ctx context.Context) {
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s/%d", host, os.Getpid())
	audit := func(action, reason string) {
		// Audited even as the daemon stops: giving up the role is an action too.
		if err := d.store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: "auto:leader", Action: action, Target: id,
			Result: "ok", Reason: reason, Details: map[string]any{"group": d.cfg.Election.Group, "admin": d.cfg.Admin.Listen}}); err != nil {
			d.log.Warn("cannot write the audit log", "err", err)
		}
	}
	was := false
	for {
		leading, changed := d.elector.State()
		if leading && !was {
			rec := LeaderRecord{Identity: id, Admin: d.cfg.Admin.Listen, Since: time.Now().UTC()}
			if err := checkpoints.PutJSON(ctx, d.store, leaderKey, rec); err != nil && ctx.Err() == nil {
				d.log.Warn("cannot record this daemon as the leader", "err", err)
			}
			audit("leader.acquire", "")
		} else if !leading && was {
			audit("leader.release", "")
		}
		was = leading
		select {
		case <-ctx.Done():
			if was {
				// The elector gives the role up as it stops, possibly after
				// this loop has gone: record it here.
				audit("leader.release", "daemon stopping")
			}
			return
		case <-changed:
		}
	}
}

func (d *daemon) leaderInfo(w http.ResponseWriter, r *http.Request) {
	info, err := d.leaderState(r.Context())
	if err != nil {
		admin.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, info)
}

// leaderState is whether this daemon leads and which one does.
func (d *daemon) leaderState(ctx context.Context) (LeaderInfo, error) {
	info := LeaderInfo{Election: d.elector != nil}
	if d.elector == nil {
		return info, nil
	}
	info.Leading = d.elector.Leading()
	rec, ok, err := checkpoints.GetJSON[LeaderRecord](ctx, d.store, leaderKey)
	if ok {
		info.Leader = &rec
	}
	return info, err
}

// String is the leader line of `tidemark status`.
func (i LeaderInfo) String() string {
	switch {
	case !i.Election:
		return "no election (election.enabled is off)"
	case i.Leading:
		return "this daemon"
	case i.Leader == nil:
		return "none yet"
	}
	return fmt.Sprintf("%s (admin %s, since %s)", i.Leader.Identity, i.Leader.Admin, i.Leader.Since.Format(time.RFC3339))
}
