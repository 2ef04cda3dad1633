package rollout

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/sink"
)

// PipelineSignals reads the daemon's own numbers: reconcile round summaries
// from the checkpoints store, lag from the local sink, write latency,
// retries and dead letters from the sink's Prometheus metrics (differences
// over a trailing window), and type compatibility from a validate run.
type PipelineSignals struct {
	Store checkpoints.Store
	// Gatherer holds the sink's metrics (tidemark_sink_*); nil for none.
	Gatherer prometheus.Gatherer
	// Lag is the local sink's partitions; nil when this daemon runs no sink.
	// A partition at most one record behind (the commit marker) has no lag.
	Lag func() []sink.PartitionLag
	// TopicOf names the topic of a namespace.
	TopicOf func(ns string) string
	// Validate runs the type compatibility check; nil leaves type_compat without data.
	Validate func(ctx context.Context) (bool, error)
	// ValidateEvery is how long a validate result is reused. Default 10m.
	ValidateEvery time.Duration
	// Window is the trailing window of the metric-derived signals.
	Window time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time

	mu        sync.Mutex
	snaps     []metricSnap
	validAt   time.Time
	validOK   bool
	validHave bool
}

var _ Signals = (*PipelineSignals)(nil)

type metricSnap struct {
	at      time.Time
	bounds  []float64 // histogram upper bounds, ascending
	cum     []uint64  // cumulative counts per bound
	count   uint64
	retries float64
	dead    float64
}

// Sample implements Signals.
func (p *PipelineSignals) Sample(ctx context.Context, slice Slice) (map[string]Sample, error) {
	now := time.Now()
	if p.Now != nil {
		now = p.Now()
	}
	out := map[string]Sample{}
	p.lag(slice, now, out)
	if err := p.reconcile(ctx, slice, out); err != nil {
		return out, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.metrics(now, out); err != nil {
		return out, err
	}
	if p.Validate != nil {
		every := p.ValidateEvery
		if every == 0 {
			every = 10 * time.Minute
		}
		if !p.validHave || now.Sub(p.validAt) >= every {
			ok, err := p.Validate(ctx)
			if err != nil {
				// No data rather than a failure: the check could not be done.
				p.validHave = false
				return out, err
			}
			p.validOK, p.validAt, p.validHave = ok, now, true
		}
		v := 0.0
		if p.validOK {
			v = 1
		}
		out[SignalTypeCompat] = Sample{Value: v, At: now}
	}
	return out, nil
}

func (p *PipelineSignals) lag(slice Slice, now time.Time, out map[string]Sample) {
	if p.Lag == nil || p.TopicOf == nil {
		return
	}
	topics := map[string]bool{}
	for _, ns := range slice.Namespaces() {
		topics[p.TopicOf(ns)] = true
	}
	var secs float64
	var recs int64
	n := 0
	for _, l := range p.Lag() {
		if !topics[l.Topic] || l.Committed < 0 {
			continue
		}
		n++
		recs = max(recs, l.RecordsBehind)
		// A transactional topic ends with a commit marker, so a partition
		// that applied everything is one offset behind its end; the sink
		// then still reports the age of its last record, which grows while
		// the source is idle. That is not lag.
		if l.RecordsBehind > 1 {
			secs = max(secs, l.SecondsBehind)
		}
	}
	if n > 0 {
		out[SignalLagSeconds] = Sample{Value: secs, At: now}
		out[SignalLagRecords] = Sample{Value: float64(recs), At: now}
	}
}

// reconcile sums the newest round of every collection of the slice. A
// collection without a round leaves the signal without data: a gate must not
// pass on the collections that happened to be checked.
func (p *PipelineSignals) reconcile(ctx context.Context, slice Slice, out map[string]Sample) error {
	var div, rows int64
	var at, started time.Time
	var src []string
	nss := slice.Namespaces()
	for _, ns := range nss {
		sum, ok, err := checkpoints.GetJSON[checkpoints.RoundSummary](ctx, p.Store, checkpoints.KeyReconcileLatest+ns)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		div += sum.Divergent
		rows += sum.RowsCompared
		if at.IsZero() || sum.End.Before(at) {
			at = sum.End
		}
		// The evidence is as old as its oldest round.
		if started.IsZero() || sum.Start.Before(started) {
			started = sum.Start
		}
		src = append(src, ns+":"+sum.ID)
	}
	if len(nss) == 0 {
		return nil
	}
	source := strings.Join(src, ",")
	out[SignalDivergentRows] = Sample{Value: float64(div), At: at, Source: source, Started: started}
	if rows > 0 {
		out[SignalDivergenceRatio] = Sample{Value: float64(div) / float64(rows), At: at, Source: source, Started: started}
	}
	return nil
}

// metrics keeps one snapshot per evaluation and compares the newest with the
// newest one at least a window old (or the oldest, early on).
func (p *PipelineSignals) metrics(now time.Time, out map[string]Sample) error {
	if p.Gatherer == nil {
		return nil
	}
	mfs, err := p.Gatherer.Gather()
	if err != nil {
		return err
	}
	cur := metricSnap{at: now}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "tidemark_sink_write_duration_seconds":
			for _, m := range mf.GetMetric() {
				addHistogram(&cur, m.GetHistogram())
			}
		case "tidemark_sink_retries_total":
			for _, m := range mf.GetMetric() {
				cur.retries += m.GetCounter().GetValue()
			}
		case "tidemark_sink_dead_letters_total":
			for _, m := range mf.GetMetric() {
				cur.dead += m.GetCounter().GetValue()
			}
		}
	}
	p.snaps = append(p.snaps, cur)
	// Keep the newest snapshot at least a window old as the baseline.
	base := 0
	for i, s := range p.snaps {
		if now.Sub(s.at) >= p.Window {
			base = i
		}
	}
	p.snaps = p.snaps[base:]
	old := p.snaps[0]
	if len(p.snaps) < 2 || cur.count < old.count {
		return nil // one reading, or the process restarted its counters
	}
	if secs := cur.at.Sub(old.at).Seconds(); secs > 0 {
		out[SignalDeadLetterRate] = Sample{Value: (cur.dead - old.dead) / secs, At: now}
	}
	writes := cur.count - old.count
	if writes == 0 {
		return nil // no writes: latency and error ratio have no data
	}
	out[SignalErrorRatio] = Sample{Value: (cur.retries - old.retries) / float64(writes), At: now}
	if len(cur.bounds) > 0 {
		out[SignalWriteP99] = Sample{Value: quantile(0.99, old, cur), At: now}
	}
	return nil
}

func addHistogram(s *metricSnap, h *dto.Histogram) {
	if h == nil {
		return
	}
	if s.bounds == nil {
		for _, b := range h.GetBucket() {
			s.bounds = append(s.bounds, b.GetUpperBound())
			s.cum = append(s.cum, 0)
		}
	}
	for i, b := range h.GetBucket() {
		if i < len(s.cum) {
			s.cum[i] += b.GetCumulativeCount()
		}
	}
	s.count += h.GetSampleCount()
}

// quantile interpolates within the bucket holding rank q of the writes
// between two snapshots, as PromQL's histogram_quantile does; past the last
// finite bound it answers that bound.
func quantile(q float64, old, cur metricSnap) float64 {
	total := float64(cur.count - old.count)
	rank := q * total
	prevBound, prevCum := 0.0, 0.0
	for i, b := range cur.bounds {
		c := float64(cur.cum[i])
		if i < len(old.cum) {
			c -= float64(old.cum[i])
		}
		if c >= rank {
			if c == prevCum {
				return b
			}
			return prevBound + (b-prevBound)*(rank-prevCum)/(c-prevCum)
		}
		prevBound, prevCum = b, c
	}
	return cur.bounds[len(cur.bounds)-1]
}
