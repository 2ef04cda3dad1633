package daemon

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/sink"
)

// TestLagHistoryAPI checks the shape of GET /v1/lag/history, what the status
// page's lag chart reads: the window, the interval, and per partition its
// samples oldest first with time, seconds and records behind. A daemon
// without the sink role answers an empty list, not null.
func TestLagHistoryAPI(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokens"), []byte("v:viewer-token-0123456789:viewer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Admin: config.AdminConfig{TokensFile: filepath.Join(dir, "tokens")}}
	log := slog.New(slog.DiscardHandler)
	get := func(d *daemon) map[string]any {
		t.Helper()
		reg := prometheus.NewRegistry()
		srv, err := newAdminServer(cfg, d.store, log, reg)
		if err != nil {
			t.Fatal(err)
		}
		d.routes(srv, reg)
		ts := httptest.NewServer(srv)
		defer ts.Close()
		req, _ := http.NewRequest("GET", ts.URL+"/v1/lag/history", nil)
		req.Header.Set("Authorization", "Bearer viewer-token-0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/lag/history as viewer: %d %s", resp.StatusCode, body)
		}
		var v map[string]any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return v
	}

	none := get(&daemon{cfg: cfg, log: log, store: checkpointstest.New(), ready: make(chan struct{})})
	if ps, ok := none["partitions"].([]any); !ok || len(ps) != 0 {
		t.Errorf("without the sink role: partitions %#v, want []", none["partitions"])
	}

	h, err := sink.NewLagHistory(10*time.Second, time.Hour, 16)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	for i := range 3 {
		h.Record(start.Add(time.Duration(i)*10*time.Second), []sink.PartitionLag{
			{Topic: "tm.app.users", Partition: 1, Committed: 5, End: 9, RecordsBehind: 4, SecondsBehind: 2.5},
			{Topic: "tm.app.users", Partition: 0, Committed: 7, End: 7 + int64(i), RecordsBehind: int64(i), SecondsBehind: float64(i), Paused: i == 2},
		})
	}
	v := get(&daemon{cfg: cfg, log: log, store: checkpointstest.New(), ready: make(chan struct{}), lagHistory: h})
	if v["interval_seconds"] != 10.0 || v["window_seconds"] != 3600.0 || v["max_partitions"] != 16.0 || v["untracked"] != 0.0 {
		t.Errorf("header: %v", v)
	}
	if at, err := time.Parse(time.RFC3339Nano, v["at"].(string)); err != nil || time.Since(at) > time.Minute {
		t.Errorf("at: %v (%v)", v["at"], err)
	}
	ps := v["partitions"].([]any)
	if len(ps) != 2 {
		t.Fatalf("partitions: %v", ps)
	}
	p0 := ps[0].(map[string]any)
	if p0["topic"] != "tm.app.users" || p0["partition"] != 0.0 {
		t.Errorf("first partition: %v", p0)
	}
	samples := p0["samples"].([]any)
	if len(samples) != 3 {
		t.Fatalf("partition 0 samples: %v", samples)
	}
	last := samples[2].(map[string]any)
	want := start.Add(20 * time.Second).UTC().Format(time.RFC3339Nano)
	if last["time"] != want || last["seconds_behind"] != 2.0 || last["records_behind"] != 2.0 || last["paused"] != true {
		t.Errorf("newest sample of partition 0: %v, want time %s, 2 s and 2 records behind, paused", last, want)
	}
	if first := samples[0].(map[string]any); first["seconds_behind"] != 0.0 || first["paused"] != nil {
		t.Errorf("oldest sample of partition 0: %v (paused is left out when false)", first)
	}
}
