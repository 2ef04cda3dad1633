package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// rewindDaemon is a daemon with only what planning a rewind reads: a Kafka
// (kfake) holding topic t with 3 partitions of 10 records each, the log of
// partition 0 starting at offset 4 (deleted below it), and the sink group's
// offsets committed at 8 on every partition.
func rewindDaemon(t *testing.T) *daemon {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for p := range int32(3) {
		for range 10 {
			if err := cl.ProduceSync(ctx, &kgo.Record{Partition: p, Value: []byte("x"), Timestamp: time.Now()}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	adm := kadm.NewClient(cl)
	if _, err := adm.DeleteRecords(ctx, kadm.Offsets{"t": {0: {Topic: "t", Partition: 0, At: 4}}}); err != nil {
		t.Fatal(err)
	}
	offs := kadm.Offsets{}
	for p := range int32(3) {
		offs.Add(kadm.Offset{Topic: "t", Partition: p, At: 8})
	}
	if err := adm.CommitAllOffsets(ctx, "g", offs); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Capture: capture.Config{Namespaces: []string{"app.users"}}}
	cfg.Kafka.Brokers = c.ListenAddrs()
	cfg.Sink = sink.Config{Group: "g"}
	return &daemon{cfg: cfg, adm: adm}
}

// TestRewindTargetsOutsideTheLogAreRefused: a target the log cannot serve is
// refused with the valid range, never clamped to "from the start" or queued
// for a partition that does not exist.
func TestRewindTargetsOutsideTheLogAreRefused(t *testing.T) {
	d := rewindDaemon(t)
	ptr := func(n int64) *int64 { return &n }
	before1970 := time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		req    RewindRequest
		status int
		want   string // in the error
		target map[int32]int64
	}{
		{name: "no partition 7", req: RewindRequest{Topic: "t", Partitions: []int32{1, 7}, By: ptr(1)}, status: 400, want: "has no partition 7; it has partitions 0 to 2"},
		{name: "no such topic", req: RewindRequest{Topic: "nope", By: ptr(1)}, status: 404, want: "topic nope not found"},
		{name: "no topic", req: RewindRequest{By: ptr(1)}, status: 400, want: "topic is required"},
		{name: "negative offset", req: RewindRequest{Topic: "t", ToOffset: ptr(-1)}, status: 400, want: "to_offset -1 is negative"},
		{name: "offset below the log start", req: RewindRequest{Topic: "t", Partitions: []int32{0}, ToOffset: ptr(2)}, status: 400, want: "offset 2 is no longer in the log, which holds 4 to 8"},
		{name: "offset ahead", req: RewindRequest{Topic: "t", Partitions: []int32{1}, ToOffset: ptr(9)}, status: 400, want: "ahead of the committed offset 8"},
		{name: "negative by", req: RewindRequest{Topic: "t", By: ptr(-3)}, status: 400, want: "by -3 is negative"},
		{name: "by beyond the log", req: RewindRequest{Topic: "t", Partitions: []int32{0}, By: ptr(6)}, status: 400, want: "at most 4 records can be replayed"},
		{name: "before 1970", req: RewindRequest{Topic: "t", ToTime: &before1970}, status: 400, want: "before 1970"},
		{name: "two targets", req: RewindRequest{Topic: "t", By: ptr(1), ToOffset: ptr(1)}, status: 400, want: "exactly one of"},
		{name: "by within the log", req: RewindRequest{Topic: "t", By: ptr(3)}, target: map[int32]int64{0: 5, 1: 5, 2: 5}},
		{name: "to the log start", req: RewindRequest{Topic: "t", Partitions: []int32{0}, ToOffset: ptr(4)}, target: map[int32]int64{0: 4}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, err := d.planRewind(context.Background(), c.req)
			if c.target == nil {
				if err == nil || StatusOf(err) != c.status || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("got %v (status %d), want %d with %q", err, StatusOf(err), c.status, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[int32]int64{}
			for _, p := range plan.Partitions {
				got[p.Partition] = p.Target
			}
			if len(got) != len(c.target) {
				t.Fatalf("targets %v, want %v", got, c.target)
			}
			for p, want := range c.target {
				if got[p] != want {
					t.Fatalf("targets %v, want %v", got, c.target)
				}
			}
		})
	}
}

func TestBackfillOfAnUncapturedNamespaceIsRefused(t *testing.T) {
	d := &daemon{cfg: &config.Config{Capture: capture.Config{Namespaces: []string{"app.users"}}}}
	for ns, want := range map[string]int{"": 400, "app.orders": 404, "app.users": 0} {
		err := d.checkBackfillNamespace(ns)
		if (want == 0) != (err == nil) || (err != nil && StatusOf(err) != want) {
			t.Errorf("%q: %v (status %d), want %d", ns, err, StatusOf(err), want)
		}
	}
}
