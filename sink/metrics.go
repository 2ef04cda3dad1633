package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows        *prometheus.CounterVec
	latency     prometheus.Histogram
	batch       prometheus.Histogram
	retries     prometheus.Counter
	deadLetters *prometheus.CounterVec
	skipped     prometheus.Counter
	inflight    prometheus.Gauge
	limit       prometheus.Gauge
	rateWait    prometheus.Counter
	paused      prometheus.Gauge
	lagRecords  *prometheus.GaugeVec
	lagSeconds  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	tp := []string{"topic", "partition"}
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_sink_rows_total",
			Help: "Rows written to Cassandra, by table and op (upsert or delete)."}, []string{"table", "op"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tidemark_sink_write_duration_seconds",
			Help: "Time for Cassandra to acknowledge one write (a partition's batch, or one event of a key-map table).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tidemark_sink_batch_rows",
			Help:    "Rows per Cassandra write: changes to one partition of one table in one poll go as one unlogged batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128}}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_sink_retries_total",
			Help: "Writes retried after a timeout or unavailable error."}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_sink_dead_letters_total",
			Help: "Records sent to the dead-letter topic, by the stage that refused them."}, []string{"stage"}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_sink_out_of_slice_total",
			Help: "Records skipped because their key is outside the rollout's current slice."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_sink_inflight_writes",
			Help: "Cassandra writes in flight."}),
		limit: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_sink_inflight_limit",
			Help: "In-flight writes the throttle currently allows."}),
		rateWait: prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_sink_rate_wait_seconds_total",
			Help: "Time writes waited for sink.throttle.max_writes_per_second."}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_sink_paused_partitions",
			Help: "Partitions paused by an operator or a rollout trigger."}),
		lagRecords: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_replication_lag_records",
			Help: "Records between the sink's committed offset and the partition's end."}, tp),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_replication_lag_seconds",
			Help: "Seconds between now and the source cluster time of the last applied record."}, tp),
	}
	if reg != nil {
		reg.MustRegister(m.rows, m.latency, m.batch, m.retries, m.deadLetters, m.skipped, m.inflight, m.limit, m.rateWait, m.paused, m.lagRecords, m.lagSeconds)
	}
	return m
}
