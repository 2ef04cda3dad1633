package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
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

// TestCommitSurvivesATransactionTimeout: a transaction left open past its
// timeout (Kafka frozen for a minute) is aborted by the coordinator, which
// bumps the producer epoch, and the produce that was waiting fails with
// INVALID_PRODUCER_EPOCH (what Kafka 3.9 answered in the chaos suite after
// a 60 s SIGSTOP). Capture took that for another process's fence and
// stopped the namespace for good. It must recover the producer and commit
// the batch, while a real second writer with the same transactional id
// still fences it.
func TestCommitSurvivesATransactionTimeout(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	seed := kgo.SeedBrokers(kc.ListenAddrs()...)
	newTxn := func() *kgo.Client {
		cl, err := kgo.NewClient(append(producerOpts(Config{}.WithDefaults()), seed,
			kgo.TransactionalID("tidemark-capture-db.c"), kgo.TransactionTimeout(time.Minute), kgo.MaxVersions(txnVersions()))...)
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	txn := newTxn()
	defer txn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &Capture{cfg: Config{}.WithDefaults(), log: slog.New(slog.DiscardHandler), m: newMetrics(nil)}
	rec := func(v string) []*kgo.Record { return []*kgo.Record{{Topic: "t", Key: []byte("k"), Value: []byte(v)}} }

	// The first transactional produce is answered as after a timeout abort.
	kc.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		pr := req.(*kmsg.ProduceRequest)
		if pr.TransactionID == nil {
			return nil, nil, false
		}
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		resp.Version = pr.Version
		for _, rt := range pr.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.InvalidProducerEpoch.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	if err := c.commit(ctx, txn, rec("kept"), nil); err != nil {
		t.Fatalf("commit after the coordinator timed the transaction out: %v", err)
	}
	if got := committedValues(t, ctx, seed); fmt.Sprint(got) != "[kept]" {
		t.Fatalf("read_committed sees %v, want [kept]", got)
	}

	// Another process takes the transactional id: that is a fence.
	other := newTxn()
	defer other.Close()
	if _, _, err := other.ProducerID(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.commit(ctx, txn, rec("fenced"), nil); !errors.Is(err, ErrFenced) {
		t.Fatalf("commit after another process took the id: %v, want ErrFenced", err)
	}
}

// committedValues reads topic t with read_committed isolation.
func committedValues(t *testing.T, ctx context.Context, seed kgo.Opt) []string {
	t.Helper()
	cl, err := kgo.NewClient(seed, kgo.ConsumeTopics("t"), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []string
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for pctx.Err() == nil {
		cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) { out = append(out, string(r.Value)) })
	}
	return out
}
