package sink

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Default shape of the daemon's lag history: one sample every 10 s for the
// last hour, at most 1,024 partitions. At 32 bytes a sample that is at most
// 1,024 × 360 × 32 B = 11.25 MiB however long the daemon runs (a daemon
// owning 12 partitions holds 135 KiB).
const (
	DefaultHistoryEvery         = 10 * time.Second
	DefaultHistoryWindow        = time.Hour
	DefaultHistoryMaxPartitions = 1024
)

// LagSample is one partition's lag at one moment.
type LagSample struct {
	Time          time.Time `json:"time"`
	SecondsBehind float64   `json:"seconds_behind"`
	RecordsBehind int64     `json:"records_behind"`
	Paused        bool      `json:"paused,omitempty"`
}

// PartitionHistory is one partition's samples, oldest first.
type PartitionHistory struct {
	Topic     string      `json:"topic"`
	Partition int32       `json:"partition"`
	Samples   []LagSample `json:"samples"`
}

// LagHistoryView is what LagHistory.View returns and GET /v1/lag/history
// answers.
type LagHistoryView struct {
	// At is when the view was taken: the right edge of a chart of it.
	At              time.Time `json:"at"`
	IntervalSeconds float64   `json:"interval_seconds"`
	WindowSeconds   float64   `json:"window_seconds"`
	MaxPartitions   int       `json:"max_partitions"`
	// Untracked counts partitions the last sample saw but no ring holds,
	// because MaxPartitions rings were all in use by current partitions.
	Untracked  int                `json:"untracked"`
	Partitions []PartitionHistory `json:"partitions"`
}

// sample is LagSample as stored: 32 bytes instead of LagSample's 48.
type sample struct {
	at     int64 // unix nanoseconds
	secs   float64
	recs   int64
	paused bool
}

// lagRing is one partition's fixed-size ring of samples.
type lagRing struct {
	buf  []sample // len = capacity, allocated once
	next int      // slot the next sample goes to
	n    int      // samples held, ≤ len(buf)
}

func (r *lagRing) add(s sample) {
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
}

// newest is the time of the newest sample (0 when empty).
func (r *lagRing) newest() int64 {
	if r.n == 0 {
		return 0
	}
	return r.buf[(r.next-1+len(r.buf))%len(r.buf)].at
}

// LagHistory keeps a bounded history of per-partition lag for the status
// page: a ring of window/every samples per partition and at most
// maxPartitions rings, so its memory does not grow with run time, and grows
// with partitions only up to the bound. It is safe for concurrent use.
type LagHistory struct {
	every, window time.Duration
	size          int // samples per ring
	maxParts      int

	mu        sync.Mutex
	rings     map[TopicPartition]*lagRing // guarded by mu
	untracked int                         // of the last Record; guarded by mu
}

// NewLagHistory returns a history sampled every every over window (a ring of
// window/every samples per partition) for at most maxPartitions partitions.
func NewLagHistory(every, window time.Duration, maxPartitions int) (*LagHistory, error) {
	switch {
	case every <= 0:
		return nil, fmt.Errorf("sink: lag history interval %v must be positive", every)
	case window < every:
		return nil, fmt.Errorf("sink: lag history window %v is shorter than its interval %v", window, every)
	case window/every > 100_000:
		return nil, fmt.Errorf("sink: lag history of %v every %v holds more than 100,000 samples a partition", window, every)
	case maxPartitions <= 0:
		return nil, fmt.Errorf("sink: lag history max partitions %d must be positive", maxPartitions)
	}
	return &LagHistory{every: every, window: window, size: int(window / every), maxParts: maxPartitions,
		rings: map[TopicPartition]*lagRing{}}, nil
}

// Bytes is the most memory the samples can take: every ring full.
func (h *LagHistory) Bytes() int { return h.maxParts * h.size * 32 }

// Record adds one sample per partition in lags, taken at at. Partitions
// without a committed offset yet are skipped: their lag is unknown, not 0.
// A partition no sample has seen for a whole window (it moved to another
// daemon) is forgotten. When maxPartitions rings are in use, a new
// partition takes the ring of the one sampled least recently, unless that
// one is in this sample too; then the new one is counted as untracked.
func (h *LagHistory) Record(at time.Time, lags []PartitionLag) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := at.UnixNano()
	for tp, r := range h.rings {
		if now-r.newest() >= int64(h.window) {
			delete(h.rings, tp)
		}
	}
	h.untracked = 0
	for _, l := range lags {
		if l.Committed < 0 {
			continue
		}
		tp := TopicPartition{Topic: l.Topic, Partition: l.Partition}
		r := h.rings[tp]
		if r == nil {
			if len(h.rings) >= h.maxParts {
				r = h.evictLocked(now)
				if r == nil {
					h.untracked++
					continue
				}
				*r = lagRing{buf: r.buf}
			} else {
				r = &lagRing{buf: make([]sample, h.size)}
			}
			h.rings[tp] = r
		}
		r.add(sample{at: now, secs: l.SecondsBehind, recs: l.RecordsBehind, paused: l.Paused})
	}
}

// evictLocked removes the ring sampled least recently and returns it for
// reuse, or nil when every ring was sampled at now (all are current).
func (h *LagHistory) evictLocked(now int64) *lagRing {
	var oldest TopicPartition
	var r *lagRing
	for tp, x := range h.rings {
		if x.newest() < now && (r == nil || x.newest() < r.newest() ||
			x.newest() == r.newest() && (tp.Topic < oldest.Topic || tp.Topic == oldest.Topic && tp.Partition < oldest.Partition)) {
			oldest, r = tp, x
		}
	}
	if r != nil {
		delete(h.rings, oldest)
	}
	return r
}

// View returns every partition's samples of the last window before at,
// oldest first, partitions by topic and number. It copies: the caller may
// keep it.
func (h *LagHistory) View(at time.Time) LagHistoryView {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := LagHistoryView{At: at, IntervalSeconds: h.every.Seconds(), WindowSeconds: h.window.Seconds(),
		MaxPartitions: h.maxParts, Untracked: h.untracked, Partitions: []PartitionHistory{}}
	from := at.Add(-h.window).UnixNano()
	for tp, r := range h.rings {
		ph := PartitionHistory{Topic: tp.Topic, Partition: tp.Partition, Samples: make([]LagSample, 0, r.n)}
		for i := range r.n {
			s := r.buf[(r.next-r.n+i+len(r.buf))%len(r.buf)]
			if s.at < from || s.at > at.UnixNano() {
				continue
			}
			ph.Samples = append(ph.Samples, LagSample{Time: time.Unix(0, s.at).UTC(), SecondsBehind: s.secs, RecordsBehind: s.recs, Paused: s.paused})
		}
		if len(ph.Samples) > 0 {
			v.Partitions = append(v.Partitions, ph)
		}
	}
	sort.Slice(v.Partitions, func(i, j int) bool {
		a, b := v.Partitions[i], v.Partitions[j]
		if a.Topic != b.Topic {
			return a.Topic < b.Topic
		}
		return a.Partition < b.Partition
	})
	return v
}

// Run records lag() now and then every interval until ctx ends; it returns
// nil then.
func (h *LagHistory) Run(ctx context.Context, lag func() []PartitionLag) error {
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		h.Record(time.Now(), lag())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
