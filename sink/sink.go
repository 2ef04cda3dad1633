package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Deps are what the sink needs from the daemon.
type Deps struct {
	// KafkaOpts are connection options (seed brokers, TLS, SASL).
	KafkaOpts []kgo.Opt
	Writer    Writer
	Mapping   *transform.Mapping
	Store     checkpoints.Store
	Logger    *slog.Logger
	// Registerer receives the sink's metrics; nil for none.
	Registerer prometheus.Registerer
}

// TopicPartition names one partition (envelope.TopicPartition: the sink,
// the rollout and the admin API share it).
type TopicPartition = envelope.TopicPartition

// PartitionLag is how far one partition is behind.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Committed is the next offset to apply.
	Committed int64 `json:"committed"`
	// End is the partition's high watermark when last fetched.
	End           int64            `json:"end"`
	RecordsBehind int64            `json:"records_behind"`
	Applied       envelope.Version `json:"applied_version"`
	SecondsBehind float64          `json:"seconds_behind"`
	Paused        bool             `json:"paused"`
}

type partState struct {
	committed int64
	epoch     int32
	end       int64
	applied   envelope.Version
	appliedAt time.Time
}

// Sink consumes capture topics and writes Cassandra.
type Sink struct {
	cfg     Config
	cl      *kgo.Client
	kopts   []kgo.Opt // the caller's, for the static member's leave
	fenced  atomic.Bool
	w       Writer
	m       *transform.Mapping
	store   checkpoints.Store
	log     *slog.Logger
	met     *metrics
	lim     *throttle
	inSlice atomic.Pointer[func(string, []byte) bool]
	// recovered wakes writes waiting out a retry backoff once another
	// write succeeded: the target answers again.
	recovered wakeup

	mu       sync.Mutex
	parts    map[TopicPartition]*partState
	owned    map[TopicPartition]bool
	paused   map[TopicPartition]bool
	lastMark time.Time
	topics   []string
	// tasks is the writers' queue; Run closes it as it returns.
	tasks chan task
	ran   atomic.Bool
	// rowCounters is read-only after New.
	rowCounters map[*transform.Table]rowCounters
}

// New creates a sink for the namespaces mapping maps.
func New(cfg Config, d Deps) (*Sink, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Sink{cfg: cfg, w: d.Writer, m: d.Mapping, store: d.Store, log: d.Logger.With("stage", "sink"),
		met: newMetrics(d.Registerer), parts: map[TopicPartition]*partState{}, owned: map[TopicPartition]bool{},
		paused: map[TopicPartition]bool{}, tasks: make(chan task, cfg.MaxInFlight)}
	s.lim = newThrottle(cfg, s.met)
	s.rowCounters = map[*transform.Table]rowCounters{}
	var topics []string
	for _, ns := range d.Mapping.Namespaces() {
		topics = append(topics, envelope.Topic(cfg.TopicPrefix, ns))
		for _, t := range d.Mapping.Tables(ns) {
			s.rowCounters[t] = rowCounters{s.met.rows.WithLabelValues(t.QualifiedName(), "upsert"), s.met.rows.WithLabelValues(t.QualifiedName(), "delete")}
		}
	}
	s.topics = topics
	s.kopts = d.KafkaOpts
	opts := append([]kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(topics...),
		// Capture produces in transactions; aborted batches must never be applied.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
	}, d.KafkaOpts...)
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("sink: kafka client: %w", err)
	}
	s.cl = cl
	return s, nil
}

// SetSlice restricts writes to keys for which in returns true (nil: all keys).
// Records outside the slice are committed without being written.
func (s *Sink) SetSlice(in func(namespace string, key []byte) bool) {
	if in == nil {
		s.inSlice.Store(nil)
		return
	}
	s.inSlice.Store(&in)
}

// ErrFenced means another process joined the group with this sink's
// instance id: two daemons share sink.instance_id. The fenced one stops
// rather than rejoin and fence the other in turn.
var ErrFenced = errors.New("sink: fenced by another member with the same instance id")

func (s *Sink) topicOf(ns string) string { return envelope.Topic(s.cfg.TopicPrefix, ns) }

// Close leaves the group. A dynamic member leaves as the client closes (its
// revoke callback commits). A static member does not (franz-go keeps it in
// the group so a restart can take its partitions back), so Close commits what
// was applied, closes the client, and then removes the instance id from the
// group with a LeaveGroup request, so that a clean stop hands its partitions
// to the other daemons at once rather than after the session timeout. A
// fenced sink does not leave: the instance id belongs to the other process.
func (s *Sink) Close() {
	id := s.cfg.InstanceID
	if id == "" {
		s.cl.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !s.fenced.Load() {
		s.cl.CommitOffsetsSync(ctx, s.appliedOffsets(), s.commitDone)
	}
	s.cl.Close()
	if s.fenced.Load() {
		return
	}
	cl, err := kgo.NewClient(s.kopts...)
	if err == nil {
		defer cl.Close()
		var resp kadm.LeaveGroupResponses
		if resp, err = kadm.NewClient(cl).LeaveGroup(ctx, kadm.LeaveGroup(s.cfg.Group).InstanceIDs(id).Reason("tidemark sink closed")); err == nil {
			err = resp.Error()
		}
	}
	if err != nil && !errors.Is(err, kerr.UnknownMemberID) {
		s.log.Warn("cannot leave the group; its partitions move after the session timeout", "group", s.cfg.Group,
			"instance_id", id, "err", err)
		return
	}
	s.log.Info("left the group", "group", s.cfg.Group, "instance_id", id)
}
