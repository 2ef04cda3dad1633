package capture

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// abortWatch is a franz-go logger that counts commits the client turned
// into aborts on its own.
type abortWatch struct{ turned atomic.Int64 }

func (w *abortWatch) Level() kgo.LogLevel { return kgo.LogLevelInfo }
func (w *abortWatch) Log(_ kgo.LogLevel, msg string, _ ...any) {
	if strings.Contains(msg, "issuing an abort") {
		w.turned.Add(1)
	}
}

// TestReplayCommitIsNotTurnedIntoAnAbort: capture's transactional producer
// stays below KIP-890 part 2, where franz-go can end a transaction whose
// records were acknowledged with an abort and report the commit done (the
// replay tests lost records that way about once in a hundred runs on a
// loaded machine). kfake speaks part 2, so it would take it. Fifty
// transactions, each the first produce to a new topic (where it was seen),
// must all be committed and visible to a read_committed reader.
func TestReplayCommitIsNotTurnedIntoAnAbort(t *testing.T) {
	for _, k := range []struct {
		key kmsg.Key
		max int16
	}{{kmsg.Produce, 11}, {kmsg.EndTxn, 4}, {kmsg.TxnOffsetCommit, 4}} {
		if v, ok := txnVersions().LookupMaxKeyVersion(int16(k.key)); !ok || v > k.max {
			t.Fatalf("%s capped at %d (%v), want at most %d: below KIP-890 part 2", k.key.Name(), v, ok, k.max)
		}
	}
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	seed := kgo.SeedBrokers(kc.ListenAddrs()...)
	w := &abortWatch{}
	txn, err := kgo.NewClient(append(producerOpts(Config{}.WithDefaults()), seed, kgo.WithLogger(w),
		kgo.TransactionalID("t"), kgo.TransactionTimeout(time.Minute), kgo.MaxVersions(txnVersions()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adm := kadm.NewClient(txn)
	const n = 50
	var topics []string
	for i := range n {
		topic := fmt.Sprintf("t%d", i)
		topics = append(topics, topic)
		if _, err := adm.CreateTopic(ctx, 3, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := txn.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := txn.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}
	if got := w.turned.Load(); got != 0 {
		t.Fatalf("franz-go turned %d commits into aborts", got)
	}
	rd, err := kgo.NewClient(seed, kgo.ConsumeTopics(topics...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	seen := 0
	for seen < n {
		fs := rd.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%d of %d committed records visible", seen, n)
		}
		seen += fs.NumRecords()
	}
}
