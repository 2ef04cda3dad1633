package reconcile

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	divergent  *prometheus.GaugeVec
	inFlight   *prometheus.GaugeVec
	compared   *prometheus.CounterVec
	mismatches *prometheus.CounterVec
	rounds     *prometheus.CounterVec
	duration   prometheus.Histogram
	lastRound  prometheus.Gauge
	lagSeconds *prometheus.GaugeVec
	lagRecords *prometheus.GaugeVec
	// segmentsTaken and segmentsRedone count this daemon's segment claims,
	// and those that took a segment over from a worker that stopped.
	segmentsTaken  prometheus.Counter
	segmentsRedone prometheus.Counter
	lastRoundAt    atomic.Int64 // unix nanoseconds; 0 before the first round
	lastRoundAge   prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		divergent: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_reconcile_divergent_rows",
			Help: "Divergent rows found by the last finished round, by table and class (missing, extra, different, stale)."}, []string{"table", "class"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_reconcile_in_flight_rows",
			Help: "Rows the last round found still on their way through the pipeline (not divergence)."}, []string{"table"}),
		compared: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_reconcile_rows_compared_total",
			Help: "Rows compared (source and target side each counted once per row)."}, []string{"table"}),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_reconcile_bucket_mismatches_total",
			Help: "Merkle leaves (token ranges) whose source and target hashes differed."}, []string{"table"}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_reconcile_rounds_total",
			Help: "Finished rounds by result: clean, divergent, incomplete, failed."}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tidemark_reconcile_round_duration_seconds",
			Help: "Wall time of reconcile rounds.", Buckets: prometheus.ExponentialBuckets(1, 2, 14)}),
		lastRound: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_reconcile_last_round_timestamp_seconds",
			Help: "When the last round finished (unix seconds)."}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_reconcile_replication_lag_seconds",
			Help: "Seconds from the newest applied source version to now on partitions with records behind, as the last round saw them."}, []string{"topic", "partition"}),
		lagRecords: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_reconcile_replication_lag_records",
			Help: "Records the sink group has not committed, per partition, as the last round saw them."}, []string{"topic", "partition"}),
	}
	m.segmentsTaken = prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_reconcile_segments_taken_total",
		Help: "Round segments this daemon took to hash (reconcile.segments > 1)."})
	m.segmentsRedone = prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_reconcile_segments_redone_total",
		Help: "Round segments this daemon took over from a worker whose lease expired, and hashed again from the start."})
	m.lastRoundAge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tidemark_reconcile_last_round_age_seconds",
		Help: "Seconds since the last round finished (+Inf before the first)."}, func() float64 {
		at := m.lastRoundAt.Load()
		if at == 0 {
			return math.Inf(1)
		}
		return time.Since(time.Unix(0, at)).Seconds()
	})
	if reg != nil {
		reg.MustRegister(m.divergent, m.inFlight, m.compared, m.mismatches, m.rounds, m.duration, m.lastRound,
			m.lagSeconds, m.lagRecords, m.lastRoundAge, m.segmentsTaken, m.segmentsRedone)
	}
	return m
}

func (m *metrics) observe(r *Report) {
	for _, t := range r.Tables {
		for class, n := range map[string]int64{ClassMissing: t.Missing, ClassExtra: t.Extra, ClassDifferent: t.Different, ClassStale: t.Stale} {
			m.divergent.WithLabelValues(t.Table, class).Set(float64(n))
		}
		m.inFlight.WithLabelValues(t.Table).Set(float64(t.InFlight))
		m.compared.WithLabelValues(t.Table).Add(float64(t.RowsSource + t.RowsTarget))
		m.mismatches.WithLabelValues(t.Table).Add(float64(t.BucketMismatches))
	}
	m.rounds.WithLabelValues(r.Status).Inc()
	m.duration.Observe(r.DurationSeconds)
	m.lastRound.Set(float64(r.End.Unix()))
	m.lastRoundAt.Store(r.End.UnixNano())
	for _, p := range r.LagEnd {
		m.lagSeconds.WithLabelValues(p.Topic, fmt.Sprint(p.Partition)).Set(p.SecondsBehind)
		m.lagRecords.WithLabelValues(p.Topic, fmt.Sprint(p.Partition)).Set(float64(p.RecordsBehind))
	}
}
