package capture

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	events         *prometheus.CounterVec
	duplicates     *prometheus.CounterVec
	produce        prometheus.Histogram
	checkpointTS   *prometheus.GaugeVec
	sourceTime     *prometheus.GaugeVec
	producedTime   *prometheus.GaugeVec
	deadLetters    *prometheus.CounterVec
	historyLost    *prometheus.GaugeVec
	backfillDocs   *prometheus.CounterVec
	backfillChunk  *prometheus.CounterVec
	backfillDone   *prometheus.GaugeVec
	backfillErrors *prometheus.CounterVec
	invalidated    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	ns := []string{"namespace"}
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_events_total",
			Help: "Change and backfill events produced to Kafka, by namespace and op."}, []string{"namespace", "op"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_duplicates_total",
			Help: "Events produced again after a restart (at or below the checkpointed cluster time)."}, ns),
		produce: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tidemark_capture_produce_duration_seconds",
			Help: "Time to produce and commit one batch to Kafka.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		checkpointTS: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_checkpoint_timestamp_seconds",
			Help: "Unix time of the last resume-token checkpoint; now minus this is the checkpoint age."}, ns),
		sourceTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_source_cluster_time_seconds",
			Help: "Cluster time of the newest change event read from the source."}, ns),
		producedTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_produced_cluster_time_seconds",
			Help: "Cluster time of the newest change event acknowledged by Kafka."}, ns),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_dead_letters_total",
			Help: "Events sent to the dead-letter topic, by reason."}, []string{"namespace", "reason"}),
		historyLost: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_history_lost",
			Help: "1 while capture of a namespace is stopped because the source no longer has its resume point."}, ns),
		backfillDocs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_backfill_documents_total",
			Help: "Documents emitted by backfill scans."}, ns),
		backfillChunk: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_backfill_chunks_total",
			Help: "Backfill chunks completed and checkpointed."}, ns),
		backfillDone: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_backfill_progress_ratio",
			Help: "Share of the estimated documents the current backfill has emitted (1 when done)."}, ns),
		backfillErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_capture_backfill_errors_total",
			Help: "Failed backfill reads (each retried, up to capture.backfill.retries in a row)."}, ns),
		invalidated: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_capture_invalidated",
			Help: "1 while capture of a namespace is stopped because its collection was dropped or renamed."}, ns),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.duplicates, m.produce, m.checkpointTS, m.sourceTime, m.producedTime,
			m.deadLetters, m.historyLost, m.backfillDocs, m.backfillChunk, m.backfillDone,
			m.backfillErrors, m.invalidated)
	}
	return m
}
