package daemon

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/leader"
)

// TestLeaderFence runs one elector on kfake whose terms come from the
// store (takeOffice): the first term gets epoch 1 and the fence of work
// done because this daemon leads passes. Once leader/current holds a newer
// epoch (another daemon took office), the fence refuses with a
// DeposedError, audits and counts the refusal, and the daemon steps down;
// it then takes office again above that epoch.
func TestLeaderFence(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	store := checkpointstest.New()
	cfg := &config.Config{}
	cfg.Election = leader.Config{Enabled: true, SessionTimeout: 6 * time.Second}.WithDefaults("fence")
	cfg.Admin.Listen = "127.0.0.1:7070"
	reg := prometheus.NewRegistry()
	d := &daemon{cfg: cfg, log: slog.New(slog.DiscardHandler), store: store}
	d.elector = leader.New(cfg.Election, leader.Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(kc.ListenAddrs()...)}, TakeOffice: d.takeOffice, Logger: d.log, Registerer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.elector.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitEpoch := func(want func(int64) bool) int64 {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if e := d.elector.Epoch(); want(e) {
				return e
			}
			if time.Now().After(deadline) {
				t.Fatalf("epoch %d after 30s", d.elector.Epoch())
			}
		}
	}
	waitEpoch(func(e int64) bool { return e == 1 })
	fence := d.leaderFence("reconcile")
	if err := fence(ctx); err != nil {
		t.Fatalf("the fence of the current term: %v", err)
	}

	// Another daemon takes office.
	if _, err := checkpoints.UpdateJSON(ctx, store, leaderKey, func(r LeaderRecord, _ bool) (LeaderRecord, error) {
		return LeaderRecord{Identity: "other/1", Admin: "127.0.0.1:7071", Since: time.Now(), Epoch: r.Epoch + 1}, nil
	}); err != nil {
		t.Fatal(err)
	}
	err = fence(ctx)
	var de *leader.DeposedError
	if !errors.As(err, &de) || de.Epoch != 1 || de.Current != 2 {
		t.Fatalf("the fence after another daemon took office: %v, want a DeposedError of epoch 1 against 2", err)
	}
	es, _ := store.Audit(ctx, checkpoints.AuditFilter{Action: "leader.fenced"})
	if len(es) != 1 || es[0].Actor != "auto:reconcile" || es[0].Result != "refused" || es[0].Details["current_epoch"] != int64(2) {
		t.Fatalf("leader.fenced audit: %+v", es)
	}
	if n := counterValue(t, reg, "tidemark_leader_fenced_writes_total"); n != 1 {
		t.Fatalf("tidemark_leader_fenced_writes_total = %v, want 1", n)
	}
	// The elector stepped down and joined again: its next term is above
	// the other daemon's.
	if e := waitEpoch(func(e int64) bool { return e != 1 && e != 0 }); e != 3 {
		t.Fatalf("next term's epoch %d, want 3", e)
	}
	if err := fence(ctx); err != nil {
		t.Fatalf("the fence of the new term: %v", err)
	}
}

// counterValue is the value of a registered counter's only series.
func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no single series of %s", name)
	return 0
}
