package checkpoints

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaStore keeps the state in one compacted Kafka topic, so it survives the
// daemon's machine being replaced and several daemons share it. It is the
// default store for daemons.
//
// The log is the truth. Every Put, Delete and Append is one record produced
// with acks=all by an idempotent producer; every Store instance reads the whole
// topic from the start into memory on open and keeps tailing it, applying
// records in log order. For one key, the record later in the log wins, on every
// daemon alike, whoever wrote it and in whatever order the writes were issued.
//
// Topic layout (one topic, compacted, nothing else in it):
//
//   - A value: key = the store key, value = a frame (see appendFrame) around the
//     bytes given to Put. Delete produces a tombstone (nil value), which
//     compaction eventually removes together with every older value.
//   - An audit entry: key = "_audit/<RFC 3339 time>/<writer>/<seq>", value = a
//     frame around the entry's JSON. Compaction keeps the newest record of each
//     key, and no two audit records share a key, so compaction never removes
//     one; the topic's cleanup.policy is exactly "compact" (checked on open), so
//     no retention deletes them either. One topic rather than a second,
//     delete-policy topic with infinite retention: one thing to create, grant,
//     replicate and inspect, and with one partition the audit log and the state
//     changes it describes are in a single total order.
//   - A sync marker: key "_sync", written by Open and Sync to learn where the
//     end of each partition is (see Sync).
//   - A conditional write (CompareAndSwap) and the settle that follows it:
//     keys "_cas/<writer>/<seq>", tombstoned once a later settle makes them
//     unnecessary (see kafka_cas.go).
//
// Keys starting with "_" belong to the store; Put and Delete refuse them.
//
// A frame carries a format version, a kind, the writer's id and sequence
// number, the payload length and an xxhash64 of key, header and payload. A
// record whose frame does not check out (a foreign or buggy producer, a value
// cut short, a newer format) is logged, counted in
// tidemark_checkpoints_damaged_records_total, and otherwise ignored: the key
// keeps its previous intact value. If no intact value was ever seen for the key
// (compaction removed it), Get returns ErrDamaged rather than pretend the key is
// missing — a capture resume token that silently disappears would restart
// capture from scratch.
type KafkaStore struct {
	cfg     kafkaConfig
	topic   string
	cl      *kgo.Client
	brokers string
	writer  string
	seq     atomic.Uint64
	byKey   kgo.TopicPartitioner // the producer's key → partition mapping, for reads
	damaged prometheus.Counter

	mu    sync.Mutex
	kv    map[string]*kafkaEntry
	audit []AuditEntry
	// auditKeys[i] is the record key of audit[i].
	auditKeys []string
	applied   map[int32]int64 // per partition: one past the offset of the newest record applied
	// casResults holds whether each of this store's conditional records
	// was accepted, by record key, until its writer collects it.
	casResults map[string]bool
	// casKeys holds, per key that conditional records changed, what
	// settling it needs (see kafka_cas.go); casOwner maps each live
	// "_cas/" record key to the key it changes.
	casKeys  map[string]*casLog
	casOwner map[string]string
	parts    int           // partitions known; grows if partitions are added
	notify   chan struct{} // closed and replaced whenever applied moves
	lastErr  error         // the consumer's newest fetch error, for diagnostics
	failed   error         // set if the consumer stopped for good

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

var _ Store = (*KafkaStore)(nil)

// ErrDamaged is returned by Get for a key whose newest record is damaged and for
// which no earlier intact value remains in the topic. Put or Delete the key to
// repair it.
var ErrDamaged = errors.New("checkpoints: stored value is damaged")

// ErrClosed is returned by calls on a closed store.
var ErrClosed = errors.New("checkpoints: store is closed")

// kafkaEntry is what the store knows about one key.
type kafkaEntry struct {
	value   []byte
	present bool   // an intact value (not a tombstone) is current
	intact  bool   // an intact record (value or tombstone) was seen
	damage  string // newest record is damaged: where and why; "" if not
	part    int32  // partition the current record came from
	// version is one past the offset of the record that set the current
	// value or tombstone: the same on every reader, which apply one log.
	version int64
	// cas is set once a conditional record changed the key (see
	// CompareAndSwap); a Delete of such a key is conditional too.
	cas bool
}

const (
	reservedPrefix = "_"
	auditPrefix    = "_audit/"
	casPrefix      = "_cas/"
	syncKey        = "_sync"
)

// KafkaOption configures OpenKafka.
type KafkaOption func(*kafkaConfig)

type kafkaConfig struct {
	partitions  int32
	replication int16
	minISR      int
	timeout     time.Duration
	log         *slog.Logger
	reg         prometheus.Registerer
}

// KafkaPartitions sets the partition count used when the store creates the
// topic. Default 1: one total order for every key and the audit log, which is
// plenty for checkpoint traffic. An existing topic keeps its count. Do not add
// partitions to a live checkpoints topic: keys hash to new partitions (see the
// docs/checkpoints.md for the procedure).
func KafkaPartitions(n int32) KafkaOption { return func(c *kafkaConfig) { c.partitions = n } }

// KafkaReplicationFactor sets the replication factor used when the store creates
// the topic. Default -1: the broker's default.replication.factor.
func KafkaReplicationFactor(n int16) KafkaOption { return func(c *kafkaConfig) { c.replication = n } }

// KafkaMinInsyncReplicas sets the topic's min.insync.replicas when the store
// creates it. Default 0: the broker's default. With acks=all, a Put succeeds
// only once this many replicas have the record.
func KafkaMinInsyncReplicas(n int) KafkaOption { return func(c *kafkaConfig) { c.minISR = n } }

// KafkaTimeout bounds every call whose context has no deadline, so that a
// daemon shutting down with context.Background() does not wait forever for an
// unreachable broker. Default 30s.
func KafkaTimeout(d time.Duration) KafkaOption { return func(c *kafkaConfig) { c.timeout = d } }

// KafkaLogger sets the logger for damaged records and consumer errors.
func KafkaLogger(l *slog.Logger) KafkaOption { return func(c *kafkaConfig) { c.log = l } }

// KafkaRegisterer registers tidemark_checkpoints_damaged_records_total.
func KafkaRegisterer(r prometheus.Registerer) KafkaOption { return func(c *kafkaConfig) { c.reg = r } }

func (c *kafkaConfig) validate() error {
	var errs []string
	for _, l := range []struct {
		ok  bool
		msg string
	}{
		{c.partitions >= 1, fmt.Sprintf("partitions %d: at least 1", c.partitions)},
		{c.replication == -1 || c.replication >= 1, fmt.Sprintf("replication factor %d: -1 (broker default) or at least 1", c.replication)},
		{c.minISR >= 0, fmt.Sprintf("min.insync.replicas %d: 0 (broker default) or at least 1", c.minISR)},
		{c.replication < 1 || c.minISR <= int(c.replication), fmt.Sprintf("min.insync.replicas %d exceeds the replication factor %d: Kafka would silently cap it", c.minISR, c.replication)},
		{c.timeout > 0, fmt.Sprintf("timeout %s: must be positive", c.timeout)},
	} {
		if !l.ok {
			errs = append(errs, l.msg)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("checkpoints: kafka store: %s", strings.Join(errs, "; "))
	}
	return nil
}

// OpenKafka opens the store on topic, creating the topic (compacted) if it is
// missing, and returns once everything already in the topic has been read.
// kopts are the daemon's connection options (seed brokers, TLS, SASL); the store
// adds its own producer and consumer settings after them.
func OpenKafka(ctx context.Context, topic string, kopts []kgo.Opt, opts ...KafkaOption) (*KafkaStore, error) {
	cfg := kafkaConfig{partitions: 1, replication: -1, timeout: 30 * time.Second, log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if topic == "" {
		return nil, errors.New("checkpoints: kafka store: a topic name is required")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := withTimeout(ctx, cfg.timeout)
	defer cancel()

	s := &KafkaStore{
		cfg:        cfg,
		topic:      topic,
		writer:     writerID(),
		byKey:      kgo.StickyKeyPartitioner(nil).ForTopic(topic),
		kv:         map[string]*kafkaEntry{},
		applied:    map[int32]int64{},
		notify:     make(chan struct{}),
		casResults: map[string]bool{},
		casKeys:    map[string]*casLog{},
		casOwner:   map[string]string{},
		done:       make(chan struct{}),
		damaged:    damagedCounter(cfg.reg),
	}
	parts, err := s.ensureTopic(ctx, kopts)
	if err != nil {
		return nil, err
	}
	s.parts = parts

	s.cl, err = kgo.NewClient(append(append([]kgo.Opt(nil), kopts...),
		kgo.DefaultProduceTopic(topic),
		// Durable on return: every in-sync replica has the record, and the
		// broker refuses it if fewer than min.insync.replicas are in sync.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// A Put waits for its own record; lingering would only add latency.
		kgo.ProducerLinger(0),
		// Every call is bounded by its context; a topic that brokers do not
		// know yet (just created) or any more (deleted) is retried until then
		// rather than failed after four metadata refreshes.
		kgo.UnknownTopicRetries(-1),
		// Kafka's own murmur2 key hashing, so a record produced by Kafka's
		// tools for a key lands on the same partition as tidemark's.
		kgo.RecordPartitioner(partitioner()),
		// A direct (group-less) consumer from the start of every partition,
		// including partitions added later: every daemon reads everything.
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)...)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: kafka store: %w", err)
	}
	s.brokers = brokerList(s.cl)
	if off, _ := s.cl.OptValue(kgo.DisableIdempotentWrite).(bool); off {
		s.cl.Close()
		return nil, errors.New("checkpoints: kafka store: the Kafka options disable idempotent writes; the store needs them so that a retried record is neither duplicated nor reordered")
	}
	cctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.consume(cctx)
	if err := s.Sync(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("checkpoints: open %s: reading the topic to its end: %w", topic, err)
	}
	return s, nil
}

// ensureTopic creates the topic if it is missing and refuses one whose
// configuration would lose state. It returns the partition count.
func (s *KafkaStore) ensureTopic(ctx context.Context, kopts []kgo.Opt) (int, error) {
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return 0, fmt.Errorf("checkpoints: kafka store: %w", err)
	}
	defer cl.Close()
	s.brokers = brokerList(cl)
	adm := kadm.NewClient(cl)
	unreachable := func(err error) error {
		return fmt.Errorf("checkpoints: open topic %s: cannot reach Kafka at %s: %w; the daemon cannot start without its checkpoints: check kafka.brokers, the TLS/SASL settings, and that the brokers are up", s.topic, s.brokers, err)
	}
	details, err := adm.ListTopics(ctx, s.topic)
	if err != nil {
		return 0, unreachable(err)
	}
	var parts, rf int
	td, ok := details[s.topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		configs := map[string]*string{
			// compact, not "compact,delete": retention must never delete a
			// resume token that has not changed for a week, nor an audit entry.
			"cleanup.policy": kadm.StringPtr("compact"),
			// An unclean leader election can drop acknowledged records.
			"unclean.leader.election.enable": kadm.StringPtr("false"),
			// Compaction only cleans closed segments, and open reads every
			// uncompacted record: rolling daily bounds a restart to about a
			// day of history (offset marks are written every few seconds).
			"segment.ms": kadm.StringPtr(strconv.Itoa(24 * 3600 * 1000)),
		}
		if s.cfg.minISR > 0 {
			configs["min.insync.replicas"] = kadm.StringPtr(strconv.Itoa(s.cfg.minISR))
		}
		resp, err := adm.CreateTopic(ctx, s.cfg.partitions, s.cfg.replication, configs, s.topic)
		switch {
		case err == nil:
			s.cfg.log.Info("checkpoints: created topic", "topic", s.topic, "partitions", resp.NumPartitions, "replication_factor", resp.ReplicationFactor)
			if resp.NumPartitions > 0 && resp.ReplicationFactor > 0 {
				// Brokers since 2.4 say what they created; listing again
				// would hit the client's metadata cache, which still says
				// the topic is unknown, for a few seconds.
				parts, rf = int(resp.NumPartitions), int(resp.ReplicationFactor)
			}
		case errors.Is(err, kerr.TopicAlreadyExists):
			// Another daemon created it at the same moment.
		case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed):
			return 0, fmt.Errorf("checkpoints: topic %s does not exist and this daemon may not create it: %w; create it with cleanup.policy=compact (see docs/checkpoints.md)", s.topic, err)
		case errors.Is(err, kerr.InvalidReplicationFactor), errors.Is(err, kerr.InvalidConfig), errors.Is(err, kerr.PolicyViolation):
			return 0, fmt.Errorf("checkpoints: create topic %s: %w; fix checkpoints.replication_factor / min_insync_replicas for this cluster, or create the topic yourself with cleanup.policy=compact", s.topic, err)
		default:
			return 0, unreachable(err)
		}
		// Metadata can lag the creation for a moment.
		for parts == 0 {
			if details, err = adm.ListTopics(ctx, s.topic); err != nil {
				return 0, unreachable(err)
			}
			if td = details[s.topic]; td.Err == nil && len(td.Partitions) > 0 {
				parts, rf = len(td.Partitions), len(td.Partitions[0].Replicas)
				break
			}
			select {
			case <-ctx.Done():
				return 0, unreachable(fmt.Errorf("topic created but not yet in metadata: %w", ctx.Err()))
			case <-time.After(100 * time.Millisecond):
			}
		}
	} else if td.Err != nil {
		return 0, fmt.Errorf("checkpoints: topic %s: %w; grant this daemon's principal DESCRIBE, READ and WRITE on it", s.topic, td.Err)
	} else {
		parts, rf = len(td.Partitions), len(td.Partitions[0].Replicas)
	}
	var rc kadm.ResourceConfig
	for {
		rcs, err := adm.DescribeTopicConfigs(ctx, s.topic)
		if err != nil {
			return 0, unreachable(err)
		}
		if rc, err = rcs.On(s.topic, nil); err == nil {
			err = rc.Err
		}
		// A topic just created (here or by another daemon) is unknown to a
		// broker until the controller's metadata reaches it.
		if !errors.Is(err, kerr.UnknownTopicOrPartition) {
			break
		}
		select {
		case <-ctx.Done():
			return 0, unreachable(fmt.Errorf("topic created but not yet known to the brokers: %w", ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoints: topic %s: cannot read its configuration: %w; grant DESCRIBE_CONFIGS on it", s.topic, err)
	}
	cfgs := map[string]string{}
	for _, c := range rc.Configs {
		if c.Value != nil {
			cfgs[c.Key] = *c.Value
		}
	}
	if p := cfgs["cleanup.policy"]; p != "compact" {
		return 0, fmt.Errorf("checkpoints: topic %s has cleanup.policy=%q; it must be exactly \"compact\", or retention will delete checkpoints and audit entries: run kafka-configs.sh --bootstrap-server %s --alter --entity-type topics --entity-name %s --add-config cleanup.policy=compact", s.topic, p, s.brokers, s.topic)
	}
	if rf < 2 {
		s.cfg.log.Warn("checkpoints: the topic has a single replica; losing that broker's disk loses the daemon's state", "topic", s.topic)
	} else if isr, _ := strconv.Atoi(cfgs["min.insync.replicas"]); isr < 2 {
		s.cfg.log.Warn("checkpoints: min.insync.replicas is below 2, so an acknowledged checkpoint may live on one broker only", "topic", s.topic, "replication_factor", rf, "min_insync_replicas", cfgs["min.insync.replicas"])
	}
	if cfgs["unclean.leader.election.enable"] == "true" {
		s.cfg.log.Warn("checkpoints: unclean.leader.election.enable=true can drop acknowledged checkpoints", "topic", s.topic)
	}
	if parts != int(s.cfg.partitions) {
		s.cfg.log.Info("checkpoints: the topic exists with a different partition count than configured; keeping it", "topic", s.topic, "partitions", parts, "configured", s.cfg.partitions)
	}
	return parts, nil
}

// partitioner hashes keys like Kafka's default partitioner, except that sync
// markers go to the partition set on the record (Sync needs one per
// partition), and so do conditional records (to the home partition of the
// key they change, to be ordered with its other records), and so do audit
// entries (to partition 0, so that the audit chain has one order to verify).
func partitioner() kgo.Partitioner {
	return kgo.BasicConsistentPartitioner(func(topic string) func(*kgo.Record, int) int {
		byKey := kgo.StickyKeyPartitioner(nil).ForTopic(topic)
		return func(r *kgo.Record, n int) int {
			if string(r.Key) == syncKey || bytes.HasPrefix(r.Key, []byte(casPrefix)) || bytes.HasPrefix(r.Key, []byte(auditPrefix)) {
				return int(r.Partition)
			}
			return byKey.Partition(r, n)
		}
	})
}

func brokerList(cl *kgo.Client) string {
	if b, ok := cl.OptValue(kgo.SeedBrokers).([]string); ok {
		return strings.Join(b, ",")
	}
	return "(unknown)"
}

// writerID names this Store instance in every record it writes: the host, so
// an operator reading the topic knows which daemon wrote what, and random bytes,
// so two instances on one host never share audit keys.
func writerID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return -1
	}, host)
	if len(host) > 40 {
		host = host[:40]
	}
	b := make([]byte, 4)
	rand.Read(b)
	if host == "" {
		host = "host"
	}
	return host + "-" + hex.EncodeToString(b)
}

var damagedMetric = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "tidemark_checkpoints_damaged_records_total",
	Help: "Records in the checkpoints topic whose frame did not check out; the key kept its previous intact value.",
})

func damagedCounter(r prometheus.Registerer) prometheus.Counter {
	if r == nil {
		return damagedMetric
	}
	if err := r.Register(damagedMetric); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if c, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return c
			}
		}
	}
	return damagedMetric
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// consume applies every record of the topic in log order until Close.
func (s *KafkaStore) consume(ctx context.Context) {
	defer close(s.done)
	defer func() {
		if p := recover(); p != nil {
			s.mu.Lock()
			s.failed = fmt.Errorf("checkpoints: the reader of topic %s stopped (%v), so this store no longer follows it: restart the daemon", s.topic, p)
			s.mu.Unlock()
			s.cfg.log.Error("checkpoints: reader stopped", "panic", p)
		}
	}()
	for {
		fs := s.cl.PollFetches(ctx)
		if fs.IsClientClosed() || ctx.Err() != nil {
			return
		}
		s.apply(fs)
	}
}

// apply applies one poll's records and wakes the writers waiting for them.
func (s *KafkaStore) apply(fs kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock() // before consume's recover takes the lock
	fs.EachError(func(t string, p int32, err error) {
		// The client retries what can be retried; what reaches here is
		// worth an operator's attention (authorization, data loss).
		s.lastErr = fmt.Errorf("partition %d: %w", p, err)
		s.cfg.log.Warn("checkpoints: reading the topic", "topic", t, "partition", p, "err", err)
	})
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		for _, r := range fp.Records {
			s.applyLocked(r)
		}
		if n := len(fp.Records); n > 0 {
			s.applied[fp.Partition] = fp.Records[n-1].Offset + 1
			if int(fp.Partition) >= s.parts {
				s.parts = int(fp.Partition) + 1
			}
		}
	})
	close(s.notify)
	s.notify = make(chan struct{})
}

// applyLocked applies one record. Records of one key arrive in log order, so
// the newest intact one wins.
func (s *KafkaStore) applyLocked(r *kgo.Record) {
	key := string(r.Key)
	switch {
	case strings.HasPrefix(key, auditPrefix):
		if r.Value == nil {
			// tidemark never tombstones audit keys: someone else removed
			// an entry. Compaction will drop it from the topic, so drop it
			// here too and let the audit chain report the hole, rather
			// than show an entry a fresh reader will not see.
			s.cfg.log.Error("checkpoints: an audit entry was tombstoned by another producer", "topic", s.topic, "key", key,
				"partition", r.Partition, "offset", r.Offset)
			s.damaged.Inc()
			for i, k := range s.auditKeys {
				if k == key {
					s.audit = append(s.audit[:i:i], s.audit[i+1:]...)
					s.auditKeys = append(s.auditKeys[:i:i], s.auditKeys[i+1:]...)
					break
				}
			}
			return
		}
		f, err := decodeFrame(r.Key, r.Value)
		var e AuditEntry
		if err == nil && f.kind != kindAudit {
			err = fmt.Errorf("frame kind %q on an audit key", f.kind)
		}
		if err == nil {
			err = json.Unmarshal(f.payload, &e)
		}
		if err != nil {
			s.damagedLocked(r, err)
			return
		}
		s.audit = append(s.audit, e)
		s.auditKeys = append(s.auditKeys, key)
	case strings.HasPrefix(key, casPrefix):
		s.applyCASLocked(r)
	case strings.HasPrefix(key, reservedPrefix):
		// Sync markers, and reserved keys of a newer format: not state.
	default:
		e := s.kv[key]
		if e == nil {
			e = &kafkaEntry{part: r.Partition}
			s.kv[key] = e
		}
		// After partitions are added, a key hashes to a new partition; its
		// older records stay on the old one and, read in whatever order the
		// partitions arrive, must not override records on its new home.
		if home := int32(s.byKey.Partition(&kgo.Record{Key: r.Key}, s.parts)); r.Partition != home && e.part == home && e.intact {
			return
		}
		if r.Value == nil {
			*e = kafkaEntry{intact: true, part: r.Partition, version: r.Offset + 1, cas: e.cas}
			if e.cas {
				s.notePlainLocked(key, r, nil)
			}
			return
		}
		f, err := decodeFrame(r.Key, r.Value)
		if err == nil && f.kind != kindValue {
			err = fmt.Errorf("frame kind %q on a value key", f.kind)
		}
		if err != nil {
			e.damage = fmt.Sprintf("partition %d offset %d: %v", r.Partition, r.Offset, err)
			s.damagedLocked(r, err)
			return
		}
		*e = kafkaEntry{value: bytes.Clone(f.payload), present: true, intact: true, part: r.Partition, version: r.Offset + 1, cas: e.cas}
		if e.cas {
			s.notePlainLocked(key, r, f.payload)
		}
	}
}

func (s *KafkaStore) damagedLocked(r *kgo.Record, err error) {
	s.damaged.Inc()
	s.cfg.log.Error("checkpoints: damaged record ignored; the key keeps its previous intact value",
		"topic", s.topic, "key", string(r.Key), "partition", r.Partition, "offset", r.Offset, "err", err)
}

// waitApplied returns once the reader has applied partition p up to and
// including offset off — and so everything before it in that partition, by any
// writer.
func (s *KafkaStore) waitApplied(ctx context.Context, p int32, off int64) error {
	for {
		s.mu.Lock()
		ok, ch, lastErr, failed := s.applied[p] > off, s.notify, s.lastErr, s.failed
		s.mu.Unlock()
		if ok {
			return nil
		}
		if failed != nil {
			return failed
		}
		select {
		case <-ch:
		case <-s.done:
			return s.stopped()
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (the reader last reported: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		}
	}
}

// Sync returns once this store has read every record that any writer had
// acknowledged before Sync was called. Get and List read memory, which follows
// other daemons' writes within a fetch round trip; call Sync first where that
// is not enough (for example before acting on intent another daemon wrote).
//
// It writes one marker record per partition and waits to read it back, the way
// a reader learns it reached the end of a compacted log: the end offset alone
// can lie past the last record (removed tombstones), where a reader would wait
// forever.
func (s *KafkaStore) Sync(ctx context.Context) error {
	ctx, cancel := withTimeout(ctx, s.cfg.timeout)
	defer cancel()
	s.mu.Lock()
	n := s.parts
	s.mu.Unlock()
	recs := make([]*kgo.Record, n)
	for p := range recs {
		value := appendFrame(nil, syncKey, kindSync, s.writer, s.seq.Add(1), nil)
		recs[p] = &kgo.Record{Key: []byte(syncKey), Value: value, Partition: int32(p)}
	}
	acked, err := s.produce(ctx, recs...)
	if err != nil {
		return s.writeErr("sync", syncKey, err)
	}
	for _, r := range acked {
		if err := s.waitApplied(ctx, r.Partition, r.Offset); err != nil {
			return s.readErr(r, err)
		}
	}
	return nil
}

// produce returns once Kafka acknowledged every record, or when ctx ends.
//
// Not ProduceSync: with an idempotent producer, a record already sent to a
// broker that then went silent cannot be failed without breaking sequence
// numbers, so the client retries it until the broker answers, ignoring ctx —
// and ProduceSync waits for that. Here the caller gets its error when ctx ends;
// the record may still be written later, in order with every other record of
// this store, which Put's contract allows.
func (s *KafkaStore) produce(ctx context.Context, recs ...*kgo.Record) ([]*kgo.Record, error) {
	type result struct {
		r   *kgo.Record
		err error
	}
	results := make(chan result, len(recs))
	for _, r := range recs {
		s.cl.Produce(ctx, r, func(r *kgo.Record, err error) { results <- result{r, err} })
	}
	acked := make([]*kgo.Record, 0, len(recs))
	for range recs {
		select {
		case res := <-results:
			if res.err != nil {
				return nil, res.err
			}
			acked = append(acked, res.r)
		case <-ctx.Done():
			return nil, fmt.Errorf("no acknowledgement: %w", ctx.Err())
		}
	}
	return acked, nil
}

func (s *KafkaStore) checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, reservedPrefix) {
		return fmt.Errorf("checkpoints: key %q: keys must be non-empty and not start with %q, which the Kafka store reserves for its own records", key, reservedPrefix)
	}
	return nil
}

// write produces one record, then waits until the reader has applied it, so
// that the caller reads its own write and everything before it in the log.
func (s *KafkaStore) write(ctx context.Context, op, key string, value []byte) error {
	return s.writeTo(ctx, op, key, value, -1)
}

// writeTo is write to partition part, or where the key hashes for -1.
func (s *KafkaStore) writeTo(ctx context.Context, op, key string, value []byte, part int32) error {
	if err := s.stopped(); err != nil {
		return err
	}
	ctx, cancel := withTimeout(ctx, s.cfg.timeout)
	defer cancel()
	acked, err := s.produce(ctx, &kgo.Record{Key: []byte(key), Value: value, Partition: part})
	if err != nil {
		return s.writeErr(op, key, err)
	}
	r := acked[0]
	if err := s.waitApplied(ctx, r.Partition, r.Offset); err != nil {
		return s.readErr(r, err)
	}
	return nil
}

// writeErr explains a failed produce: nothing is known to be saved.
func (s *KafkaStore) writeErr(op, key string, err error) error {
	var hint string
	switch {
	case errors.Is(err, kerr.NotEnoughReplicas), errors.Is(err, kerr.NotEnoughReplicasAfterAppend):
		hint = "fewer replicas are in sync than the topic's min.insync.replicas: bring the brokers back"
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		hint = "the value exceeds the topic's max.message.bytes: store less under one key"
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.TransactionalIDAuthorizationFailed):
		hint = "grant this daemon's principal WRITE on the topic (and IDEMPOTENT_WRITE on the cluster for old brokers)"
	case errors.Is(err, kgo.ErrClientClosed):
		return ErrClosed
	default:
		hint = "check that the brokers are reachable from this host, that the topic exists and its partitions have leaders, and that min.insync.replicas replicas are in sync; until then this daemon cannot save its state"
	}
	return fmt.Errorf("checkpoints: %s %q: not saved to topic %s on brokers %s: %w; %s", op, key, s.topic, s.brokers, err, hint)
}

// readErr explains a write that Kafka acknowledged but this store has not read
// back in time.
func (s *KafkaStore) readErr(r *kgo.Record, err error) error {
	return fmt.Errorf("checkpoints: %q is saved in topic %s (partition %d, offset %d) but this daemon has not read it back: %w; check that it may READ the topic and that brokers %s answer fetches",
		r.Key, s.topic, r.Partition, r.Offset, err, s.brokers)
}

// stopped returns ErrClosed after Close, the reader's failure if it stopped on
// its own, and nil while the store works.
func (s *KafkaStore) stopped() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return s.failed
	}
	return ErrClosed
}

// Get returns the newest intact value of key that this store has read: at
// least every write this store made, and what other daemons wrote up to about
// a fetch round trip ago (see Sync).
func (s *KafkaStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, _, err := s.GetVersion(ctx, key)
	return v, err
}

// Put returns once the record is acknowledged by every in-sync replica
// (acks=all, at least min.insync.replicas) and this store has read the log up
// to it. Should Put fail, the value may or may not have been written (the
// producer may have sent it before the context ended); if it was, it wins or
// loses by its position in the log like any other write.
func (s *KafkaStore) Put(ctx context.Context, key string, value []byte) error {
	if err := s.checkKey(key); err != nil {
		return err
	}
	return s.write(ctx, "put", key, appendFrame(nil, key, kindValue, s.writer, s.seq.Add(1), value))
}

// Delete writes a tombstone, with the same guarantee as Put. For a key that
// conditional records changed, it writes an unconditional one instead: a
// tombstone is itself compacted away after delete.retention.ms, and a new
// reader would then find the conditional records it had overruled.
func (s *KafkaStore) Delete(ctx context.Context, key string) error {
	if err := s.checkKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	e := s.kv[key]
	cas := e != nil && e.cas
	s.mu.Unlock()
	if cas {
		_, err := s.conditional(ctx, casRecord{Key: key, Any: true, Delete: true})
		return err
	}
	return s.write(ctx, "delete", key, nil)
}

// GetVersion is Get with the value's version: one past the offset of the
// record that wrote it, the same on every daemon. Both are read under one
// lock: the reader applies records between two lockings, and a version newer
// than its value let a CompareAndSwap expecting it overwrite that newer
// record's change with one made from the older value (a lost update, seen
// once in about 500 runs of the conformance test under load).
func (s *KafkaStore) GetVersion(ctx context.Context, key string) ([]byte, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := s.stopped(); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.kv[key]
	switch {
	case e == nil:
		return nil, 0, ErrNotFound
	case !e.intact:
		return nil, 0, fmt.Errorf("%w: key %q in topic %s: newest record (%s) is damaged and no earlier intact value is left; Put or Delete the key to repair it", ErrDamaged, key, s.topic, e.damage)
	case !e.present:
		return nil, e.version, ErrNotFound
	}
	return bytes.Clone(e.value), e.version, nil
}

// List returns the keys under prefix with an intact value. A key whose only
// records are damaged is left out (Get reports it).
func (s *KafkaStore) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.stopped(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, e := range s.kv {
		if e.present && strings.HasPrefix(k, prefix) {
			out[k] = bytes.Clone(e.value)
		}
	}
	return out, nil
}

// Append writes e under its own key, with the same guarantee as Put.
func (s *KafkaStore) Append(ctx context.Context, e AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	payload, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("checkpoints: audit: %w", err)
	}
	seq := s.seq.Add(1)
	key := fmt.Sprintf("%s%s/%s/%d", auditPrefix, e.Time.UTC().Format(time.RFC3339Nano), s.writer, seq)
	return s.writeTo(ctx, "audit", key, appendFrame(nil, key, kindAudit, s.writer, seq, payload), 0)
}

// Audit returns the matching entries this store has read, oldest first.
func (s *KafkaStore) Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.stopped(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	var out []AuditEntry
	for _, e := range s.audit {
		if f.Match(e) {
			out = append(out, e)
		}
	}
	s.mu.Unlock()
	// Entries arrive in log order; clocks of different daemons decide between
	// them, as in the file store.
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

// AuditLog returns every audit entry this store has read, in log order.
func (s *KafkaStore) AuditLog(ctx context.Context) ([]AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.stopped(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]AuditEntry(nil), s.audit...), nil
}

// AuditLogSince returns the audit entry at index n-1 of the log order and
// every entry after it (see AuditTailReader): a copy of the tail only.
func (s *KafkaStore) AuditLogSince(ctx context.Context, n int) (*AuditEntry, []AuditEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := s.stopped(); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return auditSince(s.audit, n)
}

// auditSince is AuditLogSince over a log held in memory.
func auditSince(log []AuditEntry, n int) (*AuditEntry, []AuditEntry, error) {
	if n < 0 || n > len(log) {
		return nil, nil, nil
	}
	tail := append([]AuditEntry(nil), log[n:]...)
	if n == 0 {
		return nil, tail, nil
	}
	last := log[n-1]
	return &last, tail, nil
}

var _ AuditTailReader = (*KafkaStore)(nil)

// Close stops the reader and the client. Calls after Close return ErrClosed.
func (s *KafkaStore) Close() error {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			s.stop()
			<-s.done
		} else {
			close(s.done)
		}
		if s.cl != nil {
			s.cl.Close()
		}
	})
	return nil
}

// Frame kinds.
const (
	kindValue  byte = 'v'
	kindAudit  byte = 'a'
	kindSync   byte = 's'
	kindCAS    byte = 'c'
	kindSettle byte = 'd'
)

const frameMagic = "tmck1"

// appendFrame appends the framed record for payload under key to dst:
//
//	tmck1 <kind> <writer> <seq> <payload length> <xxhash64, 16 hex digits>\n<payload>
//
// A text header line, so that kafka-console-consumer shows who wrote a record
// and then the JSON, readable as is. The checksum covers the key (a value
// copied under another key is damaged too), the header up to the checksum, and
// the payload; the length tells a value cut short from one altered.
func appendFrame(dst []byte, key string, kind byte, writer string, seq uint64, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, frameMagic...)
	dst = append(dst, ' ', kind, ' ')
	dst = append(dst, writer...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(payload)), 10)
	dst = append(dst, ' ')
	sum := frameSum([]byte(key), dst[start:], payload)
	dst = fmt.Appendf(dst, "%016x\n", sum)
	return append(dst, payload...)
}

func frameSum(key, header, payload []byte) uint64 {
	d := xxhash.New()
	d.Write(key)
	d.Write([]byte{0})
	d.Write(header)
	d.Write(payload)
	return d.Sum64()
}

// KafkaRecord is one decoded record of the checkpoints topic.
type KafkaRecord struct {
	Kind    string // "value", "audit", "sync", "cas" or "settle"
	Writer  string // host and random id of the Store instance that wrote it
	Seq     uint64 // the writer's sequence number
	Payload []byte // the value given to Put, or the audit entry's JSON
}

// ParseKafkaRecord checks and decodes the value of a record stored under key,
// for tools that read the checkpoints topic directly. It fails for a damaged
// record or one not written by tidemark. A tombstone (nil value) is not a
// record: callers check for it first.
func ParseKafkaRecord(key, value []byte) (KafkaRecord, error) {
	f, err := decodeFrame(key, value)
	if err != nil {
		return KafkaRecord{}, err
	}
	kind := map[byte]string{kindValue: "value", kindAudit: "audit", kindSync: "sync", kindCAS: "cas", kindSettle: "settle"}[f.kind]
	if kind == "" {
		return KafkaRecord{}, fmt.Errorf("unknown frame kind %q", f.kind)
	}
	return KafkaRecord{Kind: kind, Writer: f.writer, Seq: f.seq, Payload: f.payload}, nil
}

type frame struct {
	kind    byte
	writer  string
	seq     uint64
	payload []byte
}

// maxHeader bounds the header line; a writer id is at most 49 bytes.
const maxHeader = 160

// decodeFrame checks value (stored under key) and returns its parts.
func decodeFrame(key, value []byte) (frame, error) {
	nl := bytes.IndexByte(value[:min(len(value), maxHeader)], '\n')
	if nl < 0 {
		return frame{}, errors.New("no frame header (not written by tidemark, or cut short)")
	}
	header := value[:nl]
	fields := strings.Split(string(header), " ")
	if fields[0] != frameMagic {
		if strings.HasPrefix(fields[0], "tmck") {
			return frame{}, fmt.Errorf("frame format %q is not %q: written by another tidemark version", fields[0], frameMagic)
		}
		return frame{}, errors.New("no frame header (not written by tidemark)")
	}
	if len(fields) != 6 || len(fields[1]) != 1 || fields[2] == "" || len(fields[5]) != 16 {
		return frame{}, fmt.Errorf("malformed frame header %q", header)
	}
	seq, err1 := strconv.ParseUint(fields[3], 10, 64)
	n, err2 := strconv.ParseUint(fields[4], 10, 31)
	sum, err3 := strconv.ParseUint(fields[5], 16, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return frame{}, fmt.Errorf("malformed frame header %q: %w", header, err)
	}
	payload := value[nl+1:]
	if uint64(len(payload)) != n {
		return frame{}, fmt.Errorf("payload is %d bytes, the header says %d: cut short or padded", len(payload), n)
	}
	if got := frameSum(key, header[:len(header)-16], payload); got != sum {
		return frame{}, fmt.Errorf("checksum %016x, the header says %016x", got, sum)
	}
	return frame{kind: fields[1][0], writer: fields[2], seq: seq, payload: payload}, nil
}
