//go:build integration

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// TestSoak runs one daemon with every role (capture, sink, the election,
// scheduled reconcile rounds) against a steady live workload on the MongoDB
// stand-in for TIDEMARK_SOAK_DURATION (default 30m) at TIDEMARK_SOAK_RATE
// changes per second (default 20), with a round every TIDEMARK_SOAK_ROUNDS
// (default 1m), printing every
// TIDEMARK_SOAK_SAMPLE (default 1m) the daemon's RSS, goroutines, open files,
// metric series, the checkpoints topic's size, records, live keys and audit
// entries, and the report files on disk. At the end it prints the table and
// fails if any of the bounded quantities grew over the second half of the run
// beyond its tolerance, and if Cassandra does not equal the source.
//
// Opt-in (make soak sets TIDEMARK_SOAK): a long run, not part of make test,
// and not matched by make integration's ^TestIntegration.
func TestSoak(t *testing.T) {
	if os.Getenv("TIDEMARK_SOAK") == "" {
		t.Skip("set TIDEMARK_SOAK=1 (make soak) to run the soak")
	}
	dur := soakDuration(t, "TIDEMARK_SOAK_DURATION", 30*time.Minute)
	every := soakDuration(t, "TIDEMARK_SOAK_SAMPLE", time.Minute)
	rounds := soakDuration(t, "TIDEMARK_SOAK_ROUNDS", time.Minute)
	rate := 20.0
	if v := os.Getenv("TIDEMARK_SOAK_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 || r > 500 {
			t.Fatalf("TIDEMARK_SOAK_RATE %q: want changes per second in (0, 500]", v)
		}
		rate = r
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < dur+5*time.Minute {
		t.Fatalf("the soak needs %v plus 5m to catch up and compare; go test -timeout leaves %v", dur, time.Until(dl).Round(time.Second))
	}

	e := newDaemonEnv(t, "soak")
	prefix := testbed.UniqueName(t, "soak")
	topic := prefix + ".checkpoints"
	addr := "127.0.0.1:17191"
	reports := filepath.Join(e.dir, "reports")
	adm := testbed.KafkaAdmin(t)
	// The checkpoints topic as tidemark creates it, but with one-minute
	// segments: compaction only cleans closed segments, and tidemark's 24 h
	// segments would keep every record of the run. With them the soak sees
	// what a daemon's topic looks like after days, in minutes.
	ctx0, cancel0 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel0()
	if _, err := adm.CreateTopic(ctx0, 1, 1, map[string]*string{
		"cleanup.policy":            kadm.StringPtr("compact"),
		"segment.ms":                kadm.StringPtr("60000"),
		"min.cleanable.dirty.ratio": kadm.StringPtr("0.1"),
		"delete.retention.ms":       kadm.StringPtr("60000"),
	}, topic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.DeleteTopics(context.Background(), topic) })

	cfg := fmt.Sprintf(`roles: [capture, sink]
spec: %[1]s/spec.yaml
kafka: {brokers: [%[2]s]}
mongo: {uri: %[3]q}
cassandra: {hosts: [%[4]s]}
checkpoints: {kind: kafka, topic: %[5]s}
admin: {listen: %[6]q, tokens_file: %[1]s/tokens, open_status: true}
capture: {topic_prefix: %[7]s, namespaces: [%[8]s], partitions: 3, update_lookup: capture}
sink: {group: %[7]s-g, consistency: ONE}
reconcile: {interval: %[9]s, report_dir: %[10]s, keep_reports: %[11]d, keep_verified_marks: %[12]d}
election: {enabled: true, session_timeout: 10s}
log: {level: info}
`, e.dir, strings.Join(testbed.KafkaBrokers(), ","), testbed.MongoURI(), strings.Join(testbed.CassandraHosts(), ","),
		topic, addr, prefix, e.ns, rounds, reports, soakKeepReports, soakKeepMarks)
	cfgPath := filepath.Join(e.dir, "tidemark.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Minute)
	defer cancel()
	coll := e.mc.Database(e.db).Collection("users")
	t.Cleanup(func() { e.mc.Database(e.db).Drop(context.Background()) })
	const keySpace = 3000
	var seed []any
	for i := 0; i < keySpace/2; i++ {
		seed = append(seed, soakDoc(i, 0))
	}
	if _, err := coll.InsertMany(ctx, seed); err != nil {
		t.Fatal(err)
	}
	cmd := testbed.RunDaemon(t, ctx, e.bin, "soak daemon", cfgPath)
	pid := cmd.Process.Pid
	metricsURL := "http://" + addr + "/metrics"
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := soakMetrics(ctx, metricsURL); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon's /metrics did not answer within 2 minutes")
		}
	}

	// The workload: a bounded key space, so the source stays about the same
	// size and anything that grows is the daemon's doing.
	start := time.Now()
	wctx, wcancel := context.WithDeadline(ctx, start.Add(dur))
	defer wcancel()
	var opsDone atomic.Int64
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		soakWorkload(wctx, t, coll, keySpace, rate, &opsDone)
	}()

	var samples []soakSample
	fmt.Println(soakHeader())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-tick.C:
		case <-workDone:
			done = true
		}
		s, err := soakMeasure(ctx, pid, metricsURL, adm, topic, reports, coll)
		if err != nil {
			t.Fatalf("sample at %v: %v", time.Since(start).Round(time.Second), err)
		}
		s.at = time.Since(start).Round(time.Second)
		s.ops = opsDone.Load()
		samples = append(samples, s)
		fmt.Println(s.row())
	}
	t.Logf("workload: %d changes in %v (%.1f/s)", opsDone.Load(), dur, float64(opsDone.Load())/dur.Seconds())

	// The target catches up to the source.
	want := testbed.Expected(t, e.m, e.ns, testbed.SourceDocs(t, ctx, coll))
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		got := testbed.Snapshot(t, e.s, e.m, e.ns)
		if bytes.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Cassandra does not match the source 3 minutes after the workload: got %q want %q", testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
		}
	}

	var out strings.Builder
	fmt.Fprintln(&out, soakHeader())
	for _, s := range samples {
		fmt.Fprintln(&out, s.row())
	}
	first, last := samples[0].byPrefix, samples[len(samples)-1].byPrefix
	var prefixes []string
	for p := range last {
		prefixes = append(prefixes, p)
	}
	for p := range first {
		if _, ok := last[p]; !ok {
			prefixes = append(prefixes, p)
		}
	}
	slices.Sort(prefixes)
	fmt.Fprintf(&out, "checkpoint keys by prefix, first and last sample:")
	for _, p := range prefixes {
		fmt.Fprintf(&out, " %s %d→%d", p, first[p], last[p])
	}
	t.Logf("soak, %v at %.0f changes/s, a sample every %v:\n%s", dur, rate, every, out.String())
	fits, fails := soakBounds(samples)
	t.Logf("fitted rise over the second half:\n  %s", strings.Join(fits, "\n  "))
	for _, f := range fails {
		t.Error(f)
	}
}

// The table's columns, fixed width so rows printed one by one line up.
const soakColumns = "%8s %8s %10s %5s %7s %9s %9s %6s %8s %8s %8s %6s"

func soakHeader() string {
	return fmt.Sprintf(soakColumns, "t", "RSS MiB", "goroutines", "fds", "series", "ckpt KiB", "ckpt recs", "keys", "audit(ldr)", "reports", "changes", "docs")
}

func (s soakSample) row() string {
	return fmt.Sprintf(soakColumns, s.at, fmt.Sprintf("%.1f", float64(s.rssKiB)/1024), fmt.Sprint(s.goroutines), fmt.Sprint(s.fds),
		fmt.Sprint(s.series), fmt.Sprintf("%.1f", float64(s.ckptBytes)/1024), fmt.Sprint(s.ckptRecs), fmt.Sprint(s.liveKeys),
		fmt.Sprintf("%d(%d)", s.audit, s.leaderAud), fmt.Sprint(s.reports), fmt.Sprint(s.ops), fmt.Sprint(s.docs))
}

func soakDuration(t *testing.T, env string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 10*time.Second || d > 24*time.Hour {
		t.Fatalf("%s %q: want a duration between 10s and 24h", env, v)
	}
	return d
}

func soakDoc(id, gen int) bson.D {
	return bson.D{{Key: "_id", Value: int64(id)}, {Key: "email", Value: fmt.Sprintf("s%d.%d@x.org", id, gen)},
		{Key: "age", Value: int32(gen % 90)}, {Key: "tags", Value: bson.A{"a", fmt.Sprint(gen % 7)}},
		{Key: "address", Value: bson.D{{Key: "city", Value: "Oslo"}, {Key: "zip", Value: fmt.Sprint(gen)}}}}
}

// soakWorkload changes random documents of the key space at rate per second
// until ctx ends: replaces (inserting missing ones), field updates, field
// removals and deletes, counted in n. A failed change fails the test: the
// source must be what the comparison expects.
func soakWorkload(ctx context.Context, t *testing.T, coll *mongo.Collection, keySpace int, rate float64, n *atomic.Int64) {
	r := rand.New(rand.NewPCG(15, 18))
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for gen := 1; ; gen++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		id := r.IntN(keySpace)
		filter := bson.D{{Key: "_id", Value: int64(id)}}
		var err error
		switch p := r.IntN(100); {
		case p < 30:
			_, err = coll.ReplaceOne(ctx, filter, soakDoc(id, gen), options.Replace().SetUpsert(true))
		case p < 60:
			_, err = coll.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf("u%d.%d@x.org", id, gen)}, {Key: "age", Value: int32(gen % 90)}}}})
		case p < 75:
			_, err = coll.UpdateOne(ctx, filter, bson.D{{Key: "$unset", Value: bson.D{{Key: "tags", Value: ""}}}})
		default:
			_, err = coll.DeleteOne(ctx, filter)
		}
		// A change cut short by the end of the run is not a failure: the
		// driver gives up with a deadline error a little before ctx does.
		if dl, _ := ctx.Deadline(); err != nil && ctx.Err() == nil && time.Until(dl) > 2*time.Second {
			t.Errorf("workload change %d: %v", n.Load(), err)
			return
		}
		n.Add(1)
	}
}

// soakMeasure takes one sample.
func soakMeasure(ctx context.Context, pid int, metricsURL string, adm *kadm.Client, topic, reports string, coll *mongo.Collection) (soakSample, error) {
	var s soakSample
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("the daemon is gone: %w", err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			s.rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = int64(len(fds))
	m, err := soakMetrics(ctx, metricsURL)
	if err != nil {
		return s, err
	}
	s.goroutines, s.series = int64(m["go_goroutines"]), int64(len(m))
	td, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return s, err
	}
	dirs, err := adm.DescribeAllLogDirs(ctx, td.TopicsSet())
	if err != nil {
		return s, fmt.Errorf("log dirs: %w", err)
	}
	for _, bd := range dirs {
		s.ckptBytes += bd.Size()
	}
	s.ckptRecs, s.byPrefix, err = soakScanTopic(ctx, adm, topic)
	s.leaderAud = s.byPrefix[soakLeaderAudit]
	delete(s.byPrefix, soakLeaderAudit)
	for p, n := range s.byPrefix {
		s.liveKeys += n
		if p == "_audit/" {
			s.audit = n
		}
	}
	if err != nil {
		return s, err
	}
	files, _ := filepath.Glob(filepath.Join(reports, "*.json"))
	s.reports = int64(len(files))
	n, err := coll.CountDocuments(ctx, bson.D{})
	s.docs = n
	return s, err
}

// soakMetrics reads the daemon's /metrics page: series name with labels → value.
func soakMetrics(ctx context.Context, url string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, _ := strconv.ParseFloat(line[i+1:], 64)
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// soakLeaderAudit counts, in soakScanTopic's answer, the audit entries of
// the leadership moving (leader.acquire, leader.release).
const soakLeaderAudit = "(leader audit)"

// soakScanTopic reads the checkpoints topic from its start to its end: the
// records the log holds now (after compaction), and the keys whose newest
// record is a value, counted by their first path segment ("_audit/", "mark/").
func soakScanTopic(ctx context.Context, adm *kadm.Client, topic string) (records int64, live map[string]int64, err error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, nil, err
	}
	want := map[int32]int64{}
	parts := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
			parts[o.Partition] = kgo.NewOffset().AtStart()
		}
	})
	if len(want) == 0 {
		return 0, nil, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(testbed.KafkaBrokers()...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	if err != nil {
		return 0, nil, err
	}
	defer cl.Close()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	keys := map[string]bool{}
	leaderAudit := map[string]bool{}
	for len(want) > 0 {
		fs := cl.PollFetches(sctx)
		if sctx.Err() != nil {
			return 0, nil, fmt.Errorf("read %s: %w", topic, sctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			records++
			keys[string(r.Key)] = r.Value != nil
			// The entry's JSON is readable inside its frame.
			leaderAudit[string(r.Key)] = bytes.HasPrefix(r.Key, []byte("_audit/")) && bytes.Contains(r.Value, []byte(`"action":"leader.`))
			if end, ok := want[r.Partition]; ok && r.Offset+1 >= end {
				delete(want, r.Partition)
			}
		})
	}
	live = map[string]int64{}
	for k, present := range keys {
		if present {
			p, _, _ := strings.Cut(k, "/")
			if strings.Contains(k, "/") {
				p += "/"
			}
			live[p]++
			if leaderAudit[k] {
				live[soakLeaderAudit]++
			}
		}
	}
	return records, live, nil
}
