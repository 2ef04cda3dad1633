package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// heldPuts is a store that hands every write of one key to the test before
// storing it, and stores it only when the test says so: the test can look at
// Kafka at the moment a checkpoint is written.
type heldPuts struct {
	checkpoints.Store
	key     string
	puts    chan []byte
	release chan struct{}
}

func (s *heldPuts) Put(ctx context.Context, key string, value []byte) error {
	if key == s.key {
		select {
		case s.puts <- value:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Store.Put(ctx, key, value)
}

// TestGroupCommitCheckpointsOnlyCommittedEvents: with Kafka slow to end
// transactions, batches read meanwhile are committed together, and yet at
// every checkpoint written, every event at or before it is committed in
// Kafka, and no MongoDB transaction is there in part. At the end every
// event is in Kafka once and the checkpoint is the last token.
func TestGroupCommitCheckpointsOnlyCommittedEvents(t *testing.T) {
	for _, tc := range []struct {
		name           string
		batches, size  int // server batches of size events
		batchSize      int // capture.batch_size; 0: size (full batches, a backlog)
		txnEvents      int // events per MongoDB transaction (1: none)
		maxTxnRecords  int
		endTxnDelay    time.Duration
		minTxn, maxTxn int // Kafka transactions expected
	}{
		{name: "fast Kafka", batches: 20, size: 25, txnEvents: 1, maxTxnRecords: 10_000, minTxn: 1, maxTxn: 20},
		{name: "slow commits group batches", batches: 40, size: 25, txnEvents: 1, maxTxnRecords: 10_000,
			endTxnDelay: 50 * time.Millisecond, minTxn: 1, maxTxn: 20},
		{name: "groups stop at max_txn_records", batches: 40, size: 25, txnEvents: 1, maxTxnRecords: 50,
			endTxnDelay: 20 * time.Millisecond, minTxn: 1000 / (50 + 25), maxTxn: 40},
		{name: "MongoDB transactions cut across batches", batches: 30, size: 20, txnEvents: 7, maxTxnRecords: 10_000,
			endTxnDelay: 30 * time.Millisecond, minTxn: 1, maxTxn: 30},
		// Short batches: the server had no more, so the reader polls once
		// per commit instead of reading ahead; each batch commits alone.
		{name: "caught up: short batches are not read ahead", batches: 20, size: 5, batchSize: 25, txnEvents: 1,
			maxTxnRecords: 10_000, endTxnDelay: 20 * time.Millisecond, minTxn: 19, maxTxn: 22},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				t.Fatal(err)
			}
			defer kc.Close()
			var endTxns atomic.Int64
			kc.ControlKey(int16(kmsg.EndTxn), func(kmsg.Request) (kmsg.Response, error, bool) {
				kc.KeepControl()
				endTxns.Add(1)
				if tc.endTxnDelay > 0 {
					kc.SleepControl(func() { time.Sleep(tc.endTxnDelay) })
				}
				return nil, nil, false
			})
			steps, all := groupScript(tc.batches, tc.size, tc.txnEvents)
			store := &heldPuts{Store: checkpointstest.New(), key: streamKey(rns), puts: make(chan []byte),
				release: make(chan struct{})}
			if tc.batchSize == 0 {
				tc.batchSize = tc.size
			}
			cfg := Config{Namespaces: []string{rns}, Partitions: 3, TopicPrefix: "rp", BatchSize: tc.batchSize,
				MaxTxnRecords: tc.maxTxnRecords, IdlePoll: time.Millisecond, IdleCheckpointInterval: time.Hour,
				Backfill: BackfillConfig{Enabled: new(bool)}}
			brokers := kc.ListenAddrs()
			c, err := New(cfg, Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(brokers...)}, Store: store,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.src = &replaySource{streams: [][]step{append(steps, step{})}}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.ensureTopics(ctx); err != nil {
				t.Fatal(err)
			}
			if err := store.Store.Put(ctx, streamKey(rns), mustJSON(t, streamState{StartT: 50})); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.stream(ctx, rns) }()
			var last streamState
			for running := true; running; {
				select {
				case err := <-done:
					if !errors.Is(err, errScriptDone) {
						t.Fatalf("stream ended with %v", err)
					}
					running = false
				case v := <-store.puts:
					if err := json.Unmarshal(v, &last); err != nil {
						t.Fatal(err)
					}
					checkCommittedBefore(t, consumed(t, brokers, envelope.Topic("rp", rns)), all, last, tc.txnEvents)
					store.release <- struct{}{}
				}
			}
			final := consumed(t, brokers, envelope.Topic("rp", rns))
			if len(final) != len(all) {
				t.Errorf("%d records in Kafka, want %d", len(final), len(all))
			}
			checkCommittedBefore(t, final, all, last, tc.txnEvents)
			if want := lastToken(steps); !bytes.Equal(last.Token, want) {
				t.Errorf("final checkpoint %s, want %s", last.Token, want)
			}
			t.Logf("%d Kafka transactions for %d batches", endTxns.Load(), tc.batches)
			// kfake counts EndTxn requests, retried ones too; the bounds are loose.
			if n := int(endTxns.Load()); n < tc.minTxn || n > tc.maxTxn {
				t.Errorf("%d Kafka transactions for %d batches, want %d to %d", n, tc.batches, tc.minTxn, tc.maxTxn)
			}
		})
	}
}

// groupScript is batches server batches of size inserts, each with a
// post-batch token equal to its last event's own (the server may have cut
// a MongoDB transaction there), in transactions of txnEvents distinct _ids
// sharing a cluster time. It returns the steps and every event's version.
func groupScript(batches, size, txnEvents int) ([]step, []envelope.Version) {
	var steps []step
	var all []envelope.Version
	for b := range batches {
		var evs []ev
		for k := range size {
			n := b*size + k
			e := ev{op: "insert", t: 100 + uint32(n/txnEvents), i: 1, seq: n % txnEvents, id: int64(n), doc: doc(int64(n), "n", n)}
			if txnEvents > 1 {
				e.txn = int64(n / txnEvents)
			}
			evs = append(evs, e)
			all = append(all, envelope.Version{T: e.t, I: e.i})
		}
		l := evs[len(evs)-1]
		steps = append(steps, batch(token(l.t, l.i, l.seq), evs...))
	}
	return steps, all
}

// checkCommittedBefore fails unless every event at or before st's position
// is among recs, and every MongoDB transaction (one version) is there whole
// or not at all.
func checkCommittedBefore(t *testing.T, recs []*kgo.Record, all []envelope.Version, st streamState, txnEvents int) {
	t.Helper()
	have := map[envelope.Version]int{}
	for _, r := range recs {
		e, err := envelope.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		have[e.Version]++
	}
	at := envelope.Version{T: st.T, I: st.I}
	want := map[envelope.Version]int{}
	for _, v := range all {
		want[v]++
	}
	for v, n := range want {
		if !at.Before(v) && have[v] != n {
			t.Errorf("checkpoint at %v, but event %v has %d of %d records in Kafka", at, v, have[v], n)
		}
		if have[v] != 0 && have[v] != n {
			t.Errorf("MongoDB transaction %v in Kafka in part: %d of %d records (transactions of %d)", v, have[v], n, txnEvents)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
