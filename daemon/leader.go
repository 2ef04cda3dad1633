package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/leader"
)

// leaderKey holds the elected leader's LeaderRecord.
const leaderKey = checkpoints.PrefixLeader + "current"

func leaderIdentity() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// takeOffice opens a term: it advances the epoch in leaderKey and names
// this daemon there, in one compare-and-swap, so two daemons that both
// believe they were elected (one of them frozen past its session) get
// different epochs and the later one the higher.
func (d *daemon) takeOffice(ctx context.Context) (int64, error) {
	rec, err := checkpoints.UpdateJSON(ctx, d.store, leaderKey, func(old LeaderRecord, _ bool) (LeaderRecord, error) {
		return LeaderRecord{Identity: leaderIdentity(), Admin: d.cfg.Admin.Listen, Since: time.Now().UTC(), Epoch: old.Epoch + 1}, nil
	})
	if err != nil {
		return 0, fmt.Errorf("advance the leadership epoch in %s: %w", leaderKey, err)
	}
	return rec.Epoch, nil
}

// leaderFence is the fence of work done because this daemon leads, other
// than the plan (whose state carries its own epoch): after catching up with
// the store, leaderKey must still hold this daemon's term. A newer term
// there is a DeposedError: audited, counted, and the daemon steps down.
func (d *daemon) leaderFence(component string) func(context.Context) error {
	return func(ctx context.Context) error {
		mine := d.elector.Epoch()
		if err := checkpoints.Sync(ctx, d.store); err != nil {
			return fmt.Errorf("%s: check the leadership epoch: %w", component, err)
		}
		rec, _, err := checkpoints.GetJSON[LeaderRecord](ctx, d.store, leaderKey)
		if err != nil {
			return fmt.Errorf("%s: check the leadership epoch: %w", component, err)
		}
		err = leader.Check(leaderKey, mine, rec.Epoch)
		if err == nil || mine == 0 {
			return err // mine 0: the role is gone already, nothing to tell
		}
		d.log.Error("a newer leader took office; this daemon's write is refused", "component", component, "err", err)
		if aerr := d.store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: "auto:" + component, Action: "leader.fenced",
			Target: leaderIdentity(), Result: "refused", Reason: err.Error(),
			Details: map[string]any{"key": leaderKey, "epoch": mine, "current_epoch": rec.Epoch, "leader": rec.Identity}}); aerr != nil {
			d.log.Warn("cannot write the audit log", "err", aerr)
		}
		d.elector.Deposed(component, err)
		return err
	}
}

// recordLeadership audits every change of this daemon's role until ctx
// ends (takeOffice stored the leader record).
func (d *daemon) recordLeadership(ctx context.Context) {
	id := leaderIdentity()
	audit := func(action, reason string, epoch int64) {
		// Audited even as the daemon stops: giving up the role is an action too.
		if err := d.store.Append(context.WithoutCancel(ctx), checkpoints.AuditEntry{Actor: "auto:leader", Action: action, Target: id,
			Result: "ok", Reason: reason, Details: map[string]any{"group": d.cfg.Election.Group, "admin": d.cfg.Admin.Listen,
				"epoch": epoch}}); err != nil {
			d.log.Warn("cannot write the audit log", "err", err)
		}
	}
	var was int64 // the epoch of the term this daemon holds, 0 for none
	for {
		epoch, changed := d.elector.Term()
		if epoch != was {
			if was != 0 {
				audit("leader.release", "", was)
			}
			if epoch != 0 {
				audit("leader.acquire", "", epoch)
			}
		}
		was = epoch
		select {
		case <-ctx.Done():
			if was != 0 {
				// The elector gives the role up as it stops, possibly after
				// this loop has gone: record it here.
				audit("leader.release", "daemon stopping", was)
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
