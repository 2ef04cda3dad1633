//go:build integration

package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/rollout"
)

// TestIntegrationElectionMovesTheLeadersWork runs two daemons with the
// election on, sharing one store: only the leader runs scheduled reconcile
// rounds and evaluates the plan, the other refuses plan commands and names
// the leader; when the leader is killed (SIGKILL, no goodbye to the group),
// the other takes over both within the session timeout.
func TestIntegrationElectionMovesTheLeadersWork(t *testing.T) {
	e := newDaemonEnv(t, "el")
	prefix := testbed.UniqueName(t, "el")
	extra := func(name string) string {
		return strings.NewReplacer("DIR", e.dir, "NAME", name, "NS", e.ns).Replace(`
election: {enabled: true, session_timeout: 6s}
reconcile: {interval: 2s, report_dir: DIR/reports-NAME}
rollout:
  version: el-1
  every: 250ms
  stages:
    - name: only
      slice: {collections: [NS], share: 100%}
      advance: manual
`)
	}
	addrA, addrB := "127.0.0.1:17096", "127.0.0.1:17097"
	cfgA := e.config(addrA, prefix, "", extra("a"))
	cfgB := strings.Replace(e.config(addrB, prefix, "", extra("b")), "roles: [capture, sink]", "roles: [sink]", 1)
	e.writeConfigs(t, map[string]string{"a.yaml": cfgA, "b.yaml": cfgB})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	acA, _ := admin.NewClient(addrA, e.tokenFile)
	acB, _ := admin.NewClient(addrB, e.tokenFile)
	reports := func(name string) int {
		es, _ := os.ReadDir(filepath.Join(e.dir, "reports-"+name))
		n := 0
		for _, en := range es {
			if strings.HasSuffix(en.Name(), ".json") {
				n++
			}
		}
		return n
	}
	plan := func(ac *admin.Client) rollout.Status {
		t.Helper()
		var st rollout.Status
		if err := ac.Do(ctx, "GET", "/v1/plan", nil, &st); err != nil {
			t.Fatalf("GET /v1/plan: %v", err)
		}
		return st
	}
	abort := func(ac *admin.Client) error {
		var st rollout.Status
		return ac.Do(ctx, "POST", "/v1/plan/abort", map[string]any{"reason": "election test"}, &st)
	}

	a := testbed.RunDaemon(t, ctx, e.bin, "daemon a", filepath.Join(e.dir, "a.yaml"))
	waitFor(t, "daemon a leads", func() bool { i, err := leaderOf(ctx, acA); return err == nil && i.Leading })
	testbed.RunDaemon(t, ctx, e.bin, "daemon b", filepath.Join(e.dir, "b.yaml"))
	var infoB daemon.LeaderInfo
	waitFor(t, "daemon b answers", func() bool { var err error; infoB, err = leaderOf(ctx, acB); return err == nil })
	if infoB.Leading || infoB.Leader == nil || infoB.Leader.Admin != addrA {
		t.Fatalf("daemon b: %+v, want a follower naming a (%s) as the leader", infoB, addrA)
	}
	var st daemon.Status
	if err := acB.Do(ctx, "GET", "/v1/status", nil, &st); err != nil || st.Leader.Leading || st.Leader.Leader == nil || st.Leader.Leader.Admin != addrA {
		t.Fatalf("daemon b's status names the leader %+v (%v), want a", st.Leader, err)
	}
	waitFor(t, "a's plan evaluated", func() bool { return !plan(acA).Following })
	if !plan(acB).Following {
		t.Fatal("daemon b evaluates the plan while a leads")
	}
	var he *admin.HTTPError
	if err := abort(acB); !errors.As(err, &he) || he.Code != 409 || !strings.Contains(he.Msg, "/v1/leader") {
		t.Fatalf("abort on the follower: %v, want 409 naming /v1/leader", err)
	}
	waitFor(t, "a scheduled round on the leader", func() bool { return reports("a") > 0 })
	// While the leader runs two more rounds, the follower runs none.
	n := reports("a")
	waitFor(t, "two more rounds on the leader", func() bool { return reports("a") >= n+2 })
	if n := reports("b"); n != 0 {
		t.Fatalf("the follower ran %d scheduled rounds", n)
	}

	killed := time.Now()
	if err := a.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "daemon b leads", func() bool { i, err := leaderOf(ctx, acB); return err == nil && i.Leading })
	t.Logf("daemon b took over %.1fs after daemon a was killed", time.Since(killed).Seconds())
	waitFor(t, "b's plan evaluated", func() bool { return !plan(acB).Following })
	if err := abort(acB); err != nil {
		t.Fatalf("abort on the new leader: %v", err)
	}
	if !plan(acB).Aborted {
		t.Fatal("the new leader's plan is not aborted")
	}
	waitFor(t, "a scheduled round on the new leader", func() bool { return reports("b") > 0 })
	store, err := checkpoints.OpenFile(filepath.Join(e.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	acq, err := store.Audit(ctx, checkpoints.AuditFilter{Action: "leader.acquire"})
	if err != nil {
		t.Fatal(err)
	}
	if len(acq) != 2 || acq[0].Target == acq[1].Target || acq[1].Details["admin"] != addrB {
		t.Fatalf("leader.acquire audit entries %+v, want a's then b's", acq)
	}
}
