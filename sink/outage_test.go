package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
)

// codeErr is a server error with a protocol error code, as gocql returns it
// (gocql's own types keep the code in an unexported field).
type codeErr struct {
	code int
	msg  string
}

func (e codeErr) Code() int       { return e.code }
func (e codeErr) Message() string { return e.msg }
func (e codeErr) Error() string   { return e.msg }

var _ gocql.RequestError = codeErr{}

// unavailableErrors are what gocql v2 returns while Cassandra is down,
// frozen, overloaded or unreachable: none of them is the record's fault.
var unavailableErrors = []struct {
	name string
	err  error
}{
	{"RequestErrUnavailable", &gocql.RequestErrUnavailable{Consistency: gocql.LocalQuorum, Required: 2, Alive: 1}},
	{"RequestErrWriteTimeout", &gocql.RequestErrWriteTimeout{Consistency: gocql.LocalQuorum, WriteType: "SIMPLE"}},
	{"RequestErrReadTimeout", &gocql.RequestErrReadTimeout{Consistency: gocql.LocalQuorum}},
	{"RequestErrOverloaded", &gocql.RequestErrOverloaded{}},
	{"RequestErrBootstrapping", &gocql.RequestErrBootstrapping{}},
	{"RequestErrWriteFailure", &gocql.RequestErrWriteFailure{}},
	{"RequestErrReadFailure", &gocql.RequestErrReadFailure{}},
	{"code 0x1000 unavailable", codeErr{0x1000, "Cannot achieve consistency level LOCAL_QUORUM"}},
	{"code 0x1001 overloaded", codeErr{0x1001, "Server is in overloaded state"}},
	{"code 0x1100 write timeout", codeErr{0x1100, "Operation timed out - received only 0 responses."}},
	{"code 0x1200 read timeout", codeErr{0x1200, "Operation timed out - received only 0 responses."}},
	{"code 0x0000 server error", codeErr{0x0000, "java.lang.RuntimeException"}},
	{"ErrNoConnections", gocql.ErrNoConnections},
	{"ErrTimeoutNoResponse", gocql.ErrTimeoutNoResponse},
	{"ErrConnectionClosed", gocql.ErrConnectionClosed},
	{"ErrNoStreams", gocql.ErrNoStreams},
	{"ErrUnavailable", gocql.ErrUnavailable},
	{"heartbeat failed", errors.New("gocql: heartbeat failed")},
	{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}},
	{"context deadline", fmt.Errorf("gocql: %w", context.DeadlineExceeded)},
}

// TestClassifyLeavesUnavailabilityRetryable: only a refusal of the request
// itself (invalid, or a value gocql cannot marshal) marks a record rejected;
// a missing table or a permission stops the sink; every error of an
// unavailable target stays retryable.
func TestClassifyLeavesUnavailabilityRetryable(t *testing.T) {
	for _, tc := range unavailableErrors {
		for _, err := range []error{writeError(itemsTable(t), tc.err), keyMapReadError(itemsTable(t), tc.err)} {
			if isInvalid(err) || errors.Is(err, ErrTargetBroken) {
				t.Errorf("%s: %v classified final; want it retried", tc.name, err)
			}
		}
	}
	for _, tc := range []struct {
		err    error
		target error
	}{
		{codeErr{gocql.ErrCodeInvalid, "Key may not be empty"}, ErrRejected},
		{gocql.MarshalError("can not marshal string into int"), ErrRejected},
		{codeErr{gocql.ErrCodeInvalid, "unconfigured table items"}, ErrTargetBroken},
		{codeErr{gocql.ErrCodeUnauthorized, "User x has no MODIFY permission"}, ErrTargetBroken},
	} {
		for _, err := range []error{writeError(itemsTable(t), tc.err), keyMapReadError(itemsTable(t), tc.err)} {
			if !errors.Is(err, tc.target) {
				t.Errorf("%v: classified %v; want %v", tc.err, err, tc.target)
			}
		}
	}
}

func itemsTable(t testing.TB) *transform.Table { return itemsMapping(t, 0).Tables("app.items")[0] }

// outageWriter fails every write (or key-map read) with err, the way
// CassandraWriter reports it, while down is set; then it keeps the newest
// version written per (table, id).
type outageWriter struct {
	err      error
	mu       sync.Mutex
	down     bool
	failures int
	rows     map[string]map[int64]int64
}

func (w *outageWriter) fail() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.down {
		w.failures++
	}
	return w.down
}

func (w *outageWriter) keep(t *transform.Table, id, version int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rows[t.Name] == nil {
		w.rows[t.Name] = map[int64]int64{}
	}
	w.rows[t.Name][id] = max(w.rows[t.Name][id], version)
}

func (w *outageWriter) Write(_ context.Context, t *transform.Table, cs []Change) error {
	if w.fail() {
		return writeError(t, w.err)
	}
	for _, c := range cs {
		w.keep(t, c.Row.Values[0].(int64), c.Version)
	}
	return nil
}

func (w *outageWriter) ApplyMapped(_ context.Context, t *transform.Table, ev *envelope.Event, row *transform.Row) error {
	if w.fail() {
		return keyMapReadError(t, w.err)
	}
	w.keep(t, row.Values[0].(int64), ev.Version.Micros())
	return nil
}

// keyMappedItems maps app.items to a table keyed by the mutable v, which
// needs the key map: rows are [id, v].
func keyMappedItems(t testing.TB) *transform.Mapping {
	t.Helper()
	m, err := transform.Parse([]byte(`
version: "t1"
collections:
  - namespace: app.items
    tables:
      - keyspace: app
        table: items_by_v
        partition_key: [v]
        clustering_key: [id]
        columns:
          - {name: id, type: bigint, from: _id}
          - {name: v, type: int, from: v}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Tables("app.items")[0].NeedsKeyMap() {
		t.Fatal("items_by_v needs no key map; the test would not reach ApplyMapped")
	}
	return m
}

// TestSinkRetriesThroughOutage: while the target fails every write or
// key-map read with an error of an unavailable Cassandra, well past
// sink.retries, the sink commits nothing and dead-letters nothing; once
// the target answers again, every row is written, and still nothing is
// dead-lettered. Both the plain write path and the key-map path.
func TestSinkRetriesThroughOutage(t *testing.T) {
	const n = 20
	for _, path := range []struct {
		name    string
		mapping func(testing.TB) *transform.Mapping
		table   string
	}{
		{"write", func(t testing.TB) *transform.Mapping { return itemsMapping(t, 0) }, "items"},
		{"key map", keyMappedItems, "items_by_v"},
	} {
		for _, tc := range unavailableErrors {
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				var recs []*kgo.Record
				for i := range n {
					recs = append(recs, itemRecord(t, int64(i), int32(i), uint32(i+1)))
				}
				brokers := kfakeTopic(t, 1, recs)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				w := &outageWriter{err: tc.err, down: true, rows: map[string]map[int64]int64{}}
				reg := prometheus.NewRegistry()
				sk := newItemsSink(t, brokers, Config{Group: "g", Retries: 2, RetryBackoff: time.Millisecond}, w, path.mapping(t), reg)
				defer sk.Close()
				stop := runSink(ctx, sk)
				defer stop()

				// Hold the outage until writes have failed past sink.retries (2):
				// three failures per record on average, which the old limit
				// (three attempts, then the dead-letter topic) reached only by
				// dead-lettering every record.
				for {
					w.mu.Lock()
					f := w.failures
					w.mu.Unlock()
					if f >= 3*n {
						break
					}
					select {
					case <-ctx.Done():
						t.Fatalf("only %d failed writes before the deadline", f)
					case <-time.After(5 * time.Millisecond):
					}
				}
				for _, l := range sk.Lag() {
					if l.Committed > 0 {
						t.Fatalf("partition %d committed to %d while every write failed", l.Partition, l.Committed)
					}
				}
				if got := counterValue(t, reg, "tidemark_sink_dead_letters_total", ""); got != 0 {
					t.Fatalf("%v records dead-lettered during the outage", got)
				}
				w.mu.Lock()
				w.down = false
				w.mu.Unlock()

				waitApplied(t, ctx, sk, n)
				if dead := readDeadLetters(t, ctx, brokers, "tidemark"); len(dead) != 0 {
					t.Fatalf("%d records dead-lettered: first %+v", len(dead), dead[0])
				}
				w.mu.Lock()
				defer w.mu.Unlock()
				for i := range n {
					if got, want := w.rows[path.table][int64(i)], (envelope.Version{T: 100, I: uint32(i + 1)}).Micros(); got != want {
						t.Errorf("row %d written at version %d, want %d", i, got, want)
					}
				}
			})
		}
	}
}

// TestRetryWakesWhenTheTargetAnswers: writes waiting out a long backoff
// retry as soon as another write succeeds, instead of sleeping on after
// Cassandra is back (the chaos suite measured 12.6 s to lag under 5 s after
// a 60 s outage, most of it backoff).
func TestRetryWakesWhenTheTargetAnswers(t *testing.T) {
	cfg := Config{RetryBackoff: 4 * time.Second, Retries: 100}.WithDefaults()
	s := &Sink{cfg: cfg, met: newMetrics(nil), log: slog.New(slog.DiscardHandler)}
	s.lim = newThrottle(cfg, s.met)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	down := true
	failed := 0
	write := func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if down {
			failed++
			return gocql.ErrTimeoutNoResponse
		}
		return nil
	}
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 3)
	for range 3 {
		go func() {
			err := s.retry(ctx, write)
			done <- result{time.Now(), err}
		}()
	}
	// Every write failed once and sleeps 2-6 s.
	for {
		mu.Lock()
		f := failed
		mu.Unlock()
		if f == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the writes did not fail")
		case <-time.After(time.Millisecond):
		}
	}
	mu.Lock()
	down = false
	mu.Unlock()
	up := time.Now()
	if err := s.retry(ctx, write); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if d := r.at.Sub(up); d > time.Second {
				t.Fatalf("a waiting write retried %s after another succeeded, want at once", d)
			}
		case <-ctx.Done():
			t.Fatal("the waiting writes never finished")
		}
	}
}
