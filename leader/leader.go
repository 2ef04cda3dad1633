// Package leader elects one daemon, among those sharing a Kafka cluster, to
// do the work that must happen once: scheduled reconcile rounds and the
// rollout plan's evaluation.
//
// The leader is whichever member of a consumer group is assigned the only
// partition of a one-partition topic. Kafka's group protocol already gives a
// partition to one member per generation and hands it on when that member
// leaves, or stops heartbeating for the session timeout, so tidemark needs no
// lock service.
//
// Kafka cannot stop a member that does not know it was replaced (a process
// frozen past its session timeout acts once more on waking), so each term of
// office has an epoch that only grows (see Deps.TakeOffice), and every write
// made because this daemon leads carries it: a store that holds a newer
// epoch refuses the write with a DeposedError (fence.go).
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Config names the election. Every daemon that should take part uses the
// same Group and Topic.
type Config struct {
	// Enabled turns the election on. Off, every daemon runs its schedule and
	// evaluates its plan itself (rollout.follow and reconcile.interval decide).
	Enabled bool `yaml:"enabled"`
	// Group is the consumer group the daemons join. Default "<prefix>-leader".
	Group string `yaml:"group"`
	// Topic is the one-partition topic whose partition makes the leader,
	// created if missing. Default "<prefix>.leader". Nothing is written to it.
	Topic string `yaml:"topic"`
	// SessionTimeout is how long a leader that stopped heartbeating (crashed,
	// partitioned away) keeps the role before another daemon takes it.
	// Default 30s; Kafka bounds it by group.min/max.session.timeout.ms.
	SessionTimeout time.Duration `yaml:"session_timeout"`
}

// WithDefaults fills what is unset; prefix is the capture topic prefix.
func (c Config) WithDefaults(prefix string) Config {
	if c.Group == "" {
		c.Group = prefix + "-leader"
	}
	if c.Topic == "" {
		c.Topic = prefix + ".leader"
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 30 * time.Second
	}
	return c
}

// Validate reports a config that cannot work.
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	if c.SessionTimeout < 6*time.Second {
		// Kafka's default group.min.session.timeout.ms.
		return fmt.Errorf("election.session_timeout: %s is under Kafka's default minimum of 6s", c.SessionTimeout)
	}
	return nil
}

// Elector takes part in the election until its Run returns.
type Elector struct {
	cfg   Config
	opts  []kgo.Opt
	log   *slog.Logger
	gauge prometheus.Gauge

	fenced *prometheus.CounterVec
	// takeOffice gives each term its epoch (Deps.TakeOffice).
	takeOffice func(context.Context) (int64, error)
	// rejoin asks Run to leave the group and join again: a member that was
	// fenced, or could not take office, must not sit on the partition.
	rejoin chan struct{}

	mu      sync.Mutex
	leading bool
	epoch   int64 // the term's epoch while leading, else 0
	since   time.Time
	changed chan struct{} // closed, and replaced, at every change (State)
}

// Deps are what an elector needs from the daemon.
type Deps struct {
	// KafkaOpts connect to Kafka (brokers, TLS, SASL).
	KafkaOpts []kgo.Opt
	// TakeOffice is how a daemon that was given the partition obtains its
	// term's epoch before it reports itself leading: it must return a
	// number greater than every epoch returned before, by any daemon
	// (tidemark advances a counter in its checkpoints store by
	// compare-and-swap). Nil: the epoch is the group's generation, which
	// Kafka restarts when the group is emptied and removed; good for tests,
	// not for fencing.
	TakeOffice func(context.Context) (int64, error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the elector's metrics; nil for none.
	Registerer prometheus.Registerer
}

// New prepares an elector.
func New(cfg Config, d Deps) *Elector {
	log := d.Logger
	if log == nil {
		log = slog.Default()
	}
	e := &Elector{cfg: cfg, opts: d.KafkaOpts, log: log.With("stage", "leader"), changed: make(chan struct{}),
		rejoin: make(chan struct{}, 1), takeOffice: d.TakeOffice,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_leader",
			Help: "1 while this daemon is the elected leader (runs scheduled reconcile rounds and evaluates the rollout plan), else 0."}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_leader_fenced_writes_total",
			Help: "Writes refused because a newer leader took office (this daemon's epoch is stale); each makes it step down."},
			[]string{"component"})}
	if d.Registerer != nil {
		d.Registerer.MustRegister(e.gauge, e.fenced)
	}
	return e
}

// Leading reports whether this daemon is the leader now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// Epoch is the current term's epoch while this daemon leads, else 0.
func (e *Elector) Epoch() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.epoch
}

// Term is Epoch and Changed read together (0 while not leading).
func (e *Elector) Term() (int64, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.epoch, e.changed
}

// set records a change of role; epoch is the new term's when leading.
func (e *Elector) set(leading bool, epoch int64, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.setLocked(leading, epoch, why)
}

func (e *Elector) setLocked(leading bool, epoch int64, why string) {
	if !leading {
		epoch = 0
	}
	if e.leading == leading && e.epoch == epoch {
		return
	}
	e.leading, e.epoch = leading, epoch
	if leading {
		e.since = time.Now()
		e.gauge.Set(1)
		e.log.Info("this daemon is the leader now", "group", e.cfg.Group, "epoch", epoch)
	} else {
		e.gauge.Set(0)
		e.log.Info("this daemon is no longer the leader", "why", why, "led_for", time.Since(e.since).Round(time.Millisecond))
	}
	close(e.changed)
	e.changed = make(chan struct{})
}

// holds reports whether m includes the election topic's partition.
func (e *Elector) holds(m map[string][]int32) bool {
	for _, p := range m[e.cfg.Topic] {
		if p == 0 {
			return true
		}
	}
	return false
}

// Run joins the election and stays in it until ctx ends; then it gives the
// role up at once (leaving the group), so another daemon need not wait for
// the session timeout.
func (e *Elector) Run(ctx context.Context) error {
	if err := e.createTopic(ctx); err != nil {
		return err
	}
	hbKey, joinKey, syncKey := kmsg.NewPtrHeartbeatRequest().Key(), kmsg.NewPtrJoinGroupRequest().Key(), kmsg.NewPtrSyncGroupRequest().Key()
	opts := append(e.opts[:len(e.opts):len(e.opts)],
		kgo.ConsumerGroup(e.cfg.Group),
		kgo.ConsumeTopics(e.cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(e.cfg.SessionTimeout),
		// A leader cut off from Kafka must notice before the group gives the
		// role to another member: heartbeat retries stop well inside the
		// session timeout, and then the partition is given up.
		kgo.RetryTimeoutFn(func(key int16) time.Duration {
			switch key {
			case hbKey:
				return e.cfg.SessionTimeout / 3
			case joinKey, syncKey:
				return e.cfg.SessionTimeout // franz-go's default for these
			}
			return 30 * time.Second
		}),
		kgo.OnPartitionsAssigned(func(cctx context.Context, cl *kgo.Client, m map[string][]int32) {
			if e.holds(m) {
				e.assigned(cctx, cl)
			}
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if e.holds(m) {
				e.set(false, 0, "revoked in a rebalance")
			}
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if e.holds(m) {
				e.set(false, 0, "group session lost")
			}
		}),
	)
	defer e.set(false, 0, "stopping")
	for {
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return fmt.Errorf("leader: kafka client: %w", err)
		}
		rejoin := e.member(ctx, cl)
		cl.Close() // leaves the group
		if !rejoin {
			return nil
		}
		e.set(false, 0, "rejoining the group")
		e.log.Info("election: left the group; joining again")
	}
}

// member polls as one member of the group until ctx ends (false) or a
// rejoin is asked for (true).
func (e *Elector) member(ctx context.Context, cl *kgo.Client) bool {
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var rejoin atomic.Bool
	go func() {
		select {
		case <-mctx.Done():
		case <-e.rejoin:
			rejoin.Store(true)
			cancel()
		}
	}()
	for {
		// Nothing is ever produced to the topic: polling only surfaces
		// errors, such as a group the broker refuses to let us join.
		fs := cl.PollFetches(mctx)
		if mctx.Err() != nil {
			return ctx.Err() == nil && rejoin.Load()
		}
		fs.EachError(func(t string, p int32, err error) {
			e.log.Warn("election: consumer error", "topic", t, "err", err)
		})
		select {
		case <-mctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// assigned takes office: it obtains the term's epoch, retrying for up to a
// session timeout, and only then reports this daemon leading. It runs in
// franz-go's assignment callback, which heartbeats meanwhile; a daemon that
// cannot take office in time leaves the group so another can.
func (e *Elector) assigned(ctx context.Context, cl *kgo.Client) {
	if e.takeOffice == nil {
		_, gen := cl.GroupMetadata()
		e.set(true, int64(gen), "")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.SessionTimeout)
	defer cancel()
	for {
		epoch, err := e.takeOffice(ctx)
		if err == nil {
			e.set(true, epoch, "")
			return
		}
		e.log.Warn("election: cannot take office (obtain a leadership epoch); retrying", "err", err)
		select {
		case <-ctx.Done():
			e.log.Error("election: could not take office within the session timeout; leaving the group for another daemon", "err", err)
			e.askRejoin()
			return
		case <-time.After(time.Second):
		}
	}
}

func (e *Elector) askRejoin() {
	select {
	case e.rejoin <- struct{}{}:
	default:
	}
}

func (e *Elector) createTopic(ctx context.Context) error {
	cl, err := kgo.NewClient(e.opts...)
	if err != nil {
		return fmt.Errorf("leader: kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	_, err = adm.CreateTopic(ctx, 1, -1, nil, e.cfg.Topic)
	if err == nil || errors.Is(err, kerr.TopicAlreadyExists) {
		return nil
	}
	// A principal without the right to create topics is refused even for
	// one that exists: an operator may have created it beforehand.
	if td, lerr := adm.ListTopics(ctx, e.cfg.Topic); lerr == nil {
		if d, ok := td[e.cfg.Topic]; ok && d.Err == nil && len(d.Partitions) > 0 {
			return nil
		}
	}
	return fmt.Errorf("leader: create topic %s (or create it with one partition beforehand): %w", e.cfg.Topic, err)
}

// Lead runs fn while this daemon leads, with a context that ends when it
// stops leading, and runs it again whenever it leads again. It returns when
// ctx ends, or with fn's result if fn returns on its own while leading.
func (e *Elector) Lead(ctx context.Context, fn func(context.Context) error) error {
	for {
		for leading, ch := e.State(); !leading; leading, ch = e.State() {
			select {
			case <-ctx.Done():
				return nil
			case <-ch:
			}
		}
		lctx, stop := context.WithCancel(ctx)
		var lost atomic.Bool
		go func() {
			for {
				leading, ch := e.State()
				if !leading {
					lost.Store(true)
					stop()
					return
				}
				select {
				case <-lctx.Done():
					return
				case <-ch:
				}
			}
		}()
		err := fn(lctx)
		stop()
		if ctx.Err() != nil {
			return nil
		}
		if !lost.Load() {
			return err
		}
	}
}

// State is Leading and Changed read together, so no change falls between.
func (e *Elector) State() (bool, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading, e.changed
}
