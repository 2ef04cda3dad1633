package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// slowStore takes 20 ms per write, as a Kafka round trip can.
type slowStore struct{ *checkpointstest.Memory }

func (s slowStore) Put(ctx context.Context, k string, v []byte) error {
	time.Sleep(20 * time.Millisecond)
	return s.Memory.Put(ctx, k, v)
}

func (s slowStore) CompareAndSwap(ctx context.Context, k string, old int64, v []byte) (int64, error) {
	time.Sleep(20 * time.Millisecond)
	return s.Memory.CompareAndSwap(ctx, k, old, v)
}

// TestConcurrentPausesAreNotLost sends twenty pause calls at once, one
// partition each. Each call must either take effect (200, its partition
// paused, audited ok) or be refused (409, audited as failed); before
// compare-and-swap all twenty answered 200 and one partition ended paused.
func TestConcurrentPausesAreNotLost(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokens"), []byte("op:cas-operator-0123456789:operator\n"), 0o600)
	cfg := &config.Config{Admin: config.AdminConfig{TokensFile: filepath.Join(dir, "tokens")}}
	store := slowStore{checkpointstest.New()}
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	srv, err := newAdminServer(cfg, store, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon checks that the partitions exist.
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(20, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	kcl, err := kgo.NewClient(kgo.SeedBrokers(kc.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer kcl.Close()
	d := &daemon{cfg: cfg, log: log, store: store, reg: reg, ready: make(chan struct{}), adm: kadm.NewClient(kcl)}
	d.routes(srv, reg)
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := &admin.Client{Base: ts.URL, Token: "cas-operator-0123456789", HTTP: http.DefaultClient}

	const n = 20
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.Do(context.Background(), "POST", "/v1/pause", PauseRequest{Topic: "t", Partitions: []int32{int32(i)}, Reason: fmt.Sprint("p", i)}, nil)
			codes[i] = 200
			if he, ok := err.(*admin.HTTPError); ok {
				codes[i] = he.Code
			} else if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	paused, _, err := checkpoints.GetJSON[[]sink.TopicPartition](context.Background(), store, sink.PausedKey)
	if err != nil {
		t.Fatal(err)
	}
	isPaused := map[int32]bool{}
	for _, tp := range paused {
		isPaused[tp.Partition] = true
	}
	es, _ := store.Audit(context.Background(), checkpoints.AuditFilter{Action: "POST /v1/pause"})
	results := map[string]string{}
	for _, e := range es {
		if e.Result != "started" {
			results[e.Reason] = e.Result
		}
	}
	ok := 0
	for i, code := range codes {
		reason := fmt.Sprint("p", i)
		switch code {
		case 200:
			ok++
			if !isPaused[int32(i)] || results[reason] != "ok" {
				t.Errorf("pause of partition %d answered 200 (audited %q) but it is not paused", i, results[reason])
			}
		case 409:
			if isPaused[int32(i)] || results[reason][:min(len(results[reason]), 16)] != "failed: HTTP 409" {
				t.Errorf("pause of partition %d answered 409 but is paused, or audited %q", i, results[reason])
			}
		default:
			t.Errorf("pause of partition %d answered %d", i, code)
		}
	}
	if len(paused) != ok {
		t.Errorf("%d partitions paused, %d calls answered 200", len(paused), ok)
	}
	if ok < n/2 {
		t.Errorf("only %d of %d concurrent pauses took effect", ok, n)
	}
	t.Logf("%d of %d took effect, the rest answered 409", ok, n)
}
