//go:build integration

package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestIntegrationSinkRestartAfterKillIsFast SIGKILLs a sink process that is
// a static group member (sink.instance_id) and restarts it with the same id
// while new records wait: the restarted process must apply the first of them
// within 10 s, not after the dead member's 45 s session expires. With
// TIDEMARK_MEASURE_DYNAMIC=1 it also measures a dynamic member the same way,
// the figure before static membership (not asserted).
func TestIntegrationSinkRestartAfterKillIsFast(t *testing.T) {
	kinds := []struct {
		name, instance string
		limit          time.Duration
	}{{"static", testbed.UniqueName(t, "inst"), 10 * time.Second}}
	if os.Getenv("TIDEMARK_MEASURE_DYNAMIC") != "" {
		kinds = append(kinds, struct {
			name, instance string
			limit          time.Duration
		}{"dynamic", "", 0})
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			took := restartToFirstApplied(t, k.instance)
			t.Logf("%s member: restart -> first applied record %.2f s", k.name, took.Seconds())
			if k.limit > 0 && took > k.limit {
				t.Fatalf("restart -> first applied record took %v, want under %v", took, k.limit)
			}
		})
	}
}

// restartToFirstApplied runs a sink child over 2,000 users until it applied
// them, kills it with SIGKILL, produces 100 more, restarts it and times the
// restart to the first of the new rows in Cassandra.
func restartToFirstApplied(t *testing.T, instance string) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const n = 2000
	f := newUsersFixture(t, ctx, n, func(i int64) string { return fmt.Sprintf("r%d@example.com", i) })
	cc, _ := json.Marshal(childConfig{Spec: f.spec, Prefix: f.prefix, Group: testbed.UniqueName(t, "g"),
		StoreDir: t.TempDir(), InstanceID: instance})
	child := testbed.StartChild(t, childEnv, string(cc))
	waitRow(t, ctx, f.s, f.ks, n-1, nil)

	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	var evs []event
	for i := int64(n); i < n+100; i++ {
		evs = append(evs, event{envelope.OpInsert, i, envelope.Version{T: 2000, I: uint32(i)},
			userDoc(i, fmt.Sprintf("r%d@example.com", i), 1, true)})
	}
	produce(t, ctx, prod, f.prefix+"."+f.ns, f.ns, evs)

	start := time.Now()
	child = testbed.StartChild(t, childEnv, string(cc))
	waitRow(t, ctx, f.s, f.ks, n, child.Process)
	return time.Since(start)
}

// waitRow waits until users row id is in Cassandra (or, when proc is set,
// fails if that process exits first).
func waitRow(t *testing.T, ctx context.Context, s *gocql.Session, ks string, id int64, proc *os.Process) {
	t.Helper()
	q := fmt.Sprintf("SELECT id FROM %s.users WHERE id = ?", ks)
	for {
		var got string
		err := s.Query(q, fmt.Sprint(id)).WithContext(ctx).Scan(&got)
		if err == nil {
			return
		}
		if !errors.Is(err, gocql.ErrNotFound) && ctx.Err() == nil {
			t.Logf("read users %d: %v", id, err)
		}
		if proc != nil && proc.Signal(syscall.Signal(0)) != nil {
			t.Fatalf("the sink process exited before row %d was written", id)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("row %d never appeared", id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestIntegrationSinkFencedByTwin starts a second sink with the first one's
// instance id: Kafka fences the first, whose Run must stop with ErrFenced
// naming the id, while the second goes on applying.
func TestIntegrationSinkFencedByTwin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 50
	f := newUsersFixture(t, ctx, n, func(i int64) string { return fmt.Sprintf("f%d@example.com", i) })
	group, instance := testbed.UniqueName(t, "g"), testbed.UniqueName(t, "inst")
	newSink := func() *Sink {
		w, err := NewCassandraWriter(ctx, f.s, f.m, "ONE")
		if err != nil {
			t.Fatal(err)
		}
		sk, err := New(Config{Group: group, TopicPrefix: f.prefix, InstanceID: instance},
			Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Writer: w, Mapping: f.m,
				Store: checkpointstest.New(), Logger: slog.Default()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sk.Close)
		return sk
	}
	first := newSink()
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.Run(ctx) }()
	waitRow(t, ctx, f.s, f.ks, n-1, nil)

	second := newSink()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	secondDone := make(chan error, 1)
	go func() { secondDone <- second.Run(sctx) }()
	select {
	case err := <-firstDone:
		if !errors.Is(err, ErrFenced) || !errors.Is(err, kerr.FencedInstanceID) {
			t.Fatalf("the fenced sink stopped with %v; want ErrFenced wrapping FENCED_INSTANCE_ID", err)
		}
		t.Logf("fenced sink: %v", err)
	case err := <-secondDone:
		t.Fatalf("the second sink stopped first: %v", err)
	case <-ctx.Done():
		t.Fatal("the first sink was never fenced")
	}
	// The twin owns the partition now: a new record is applied by it.
	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	produce(t, ctx, prod, f.prefix+"."+f.ns, f.ns, []event{{envelope.OpInsert, n, envelope.Version{T: 2000, I: 1},
		userDoc(n, "late@example.com", 1, true)}})
	waitRow(t, ctx, f.s, f.ks, n, nil)
	select {
	case err := <-secondDone:
		t.Fatalf("the second sink stopped: %v", err)
	default:
	}
}

// TestIntegrationSinkStaticCloseLeaves: a static member that stops cleanly
// leaves the group (franz-go does not, for static members, by itself), so a
// sink with another instance id that joins next gets the partitions at once
// rather than after the stopped member's 45 s session.
func TestIntegrationSinkStaticCloseLeaves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 50
	f := newUsersFixture(t, ctx, n, func(i int64) string { return fmt.Sprintf("c%d@example.com", i) })
	group := testbed.UniqueName(t, "g")
	newSink := func(instance string) *Sink {
		w, err := NewCassandraWriter(ctx, f.s, f.m, "ONE")
		if err != nil {
			t.Fatal(err)
		}
		sk, err := New(Config{Group: group, TopicPrefix: f.prefix, InstanceID: instance},
			Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)}, Writer: w, Mapping: f.m,
				Store: checkpointstest.New(), Logger: slog.Default()})
		if err != nil {
			t.Fatal(err)
		}
		return sk
	}
	first := newSink(testbed.UniqueName(t, "inst"))
	fctx, stopFirst := context.WithCancel(ctx)
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.Run(fctx) }()
	waitRow(t, ctx, f.s, f.ks, n-1, nil)
	stopFirst()
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	first.Close()

	prod, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	produce(t, ctx, prod, f.prefix+"."+f.ns, f.ns, []event{{envelope.OpInsert, n, envelope.Version{T: 2000, I: 1},
		userDoc(n, "next@example.com", 1, true)}})
	start := time.Now()
	second := newSink(testbed.UniqueName(t, "inst"))
	defer second.Close()
	sctx, stopSecond := context.WithCancel(ctx)
	defer stopSecond()
	go second.Run(sctx)
	waitRow(t, ctx, f.s, f.ks, n, nil)
	took := time.Since(start)
	t.Logf("after a clean stop, the next member applied its first record in %.2f s", took.Seconds())
	if took > 10*time.Second {
		t.Fatalf("the next member waited %v: the stopped static member did not leave the group", took)
	}
}
