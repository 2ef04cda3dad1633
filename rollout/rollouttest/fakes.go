// Package rollouttest provides fakes of rollout.Signals and rollout.Actions
// for unit tests, and a settable clock.
package rollouttest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
)

// Clock is a settable clock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock forward.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Signals returns the values set with Set; values are stamped with the
// clock's time unless SetAt gave another.
type Signals struct {
	Clock *Clock
	mu    sync.Mutex
	vals  map[string]rollout.Sample
	fixed map[string]bool
	// Slices records the slice of every call.
	Slices []rollout.Slice
}

var _ rollout.Signals = (*Signals)(nil)

// Set gives signal name value v from now on.
func (s *Signals) Set(name string, v float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vals == nil {
		s.vals, s.fixed = map[string]rollout.Sample{}, map[string]bool{}
	}
	s.vals[name] = rollout.Sample{Value: v}
	delete(s.fixed, name)
}

// SetAt gives signal name value v measured at at (a reconcile round's end).
func (s *Signals) SetAt(name string, v float64, at time.Time) {
	s.Set(name, v)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vals[name] = rollout.Sample{Value: v, At: at}
	s.fixed[name] = true
}

// SetSample gives signal name exactly s from now on (a reconcile round:
// its source, start and end).
func (s *Signals) SetSample(name string, smp rollout.Sample) {
	s.Set(name, smp.Value)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vals[name] = smp
	s.fixed[name] = true
}

// Unset removes a signal's data.
func (s *Signals) Unset(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.vals, name)
}

func (s *Signals) Sample(_ context.Context, sl rollout.Slice) (map[string]rollout.Sample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Slices = append(s.Slices, sl)
	out := map[string]rollout.Sample{}
	for k, v := range s.vals {
		if !s.fixed[k] {
			v.At = s.Clock.Now()
		}
		out[k] = v
	}
	return out, nil
}

// Actions records what the engine asked for and applies it to an in-memory
// pipeline: paused partitions, offsets, backfill requests.
type Actions struct {
	mu sync.Mutex
	// Topics maps a namespace to its partition count (default 3).
	Topics  map[string]int32
	slice   rollout.Slice
	slices  []rollout.Slice
	paused  map[sink.TopicPartition]bool
	pending map[string]bool
	Calls   []string
	Backlog int // records each rewind leaves to replay; CaughtUp drains one per call
	next    int
	// SinkBehind makes that many calls of Passed answer false.
	SinkBehind int
	// Reemitted counts keys handed to Reemit.
	Reemitted int
	end       int64
	div       []rollout.DivergentKeys
	divSet    bool
}

var _ rollout.Actions = (*Actions)(nil)

func (a *Actions) record(format string, args ...any) {
	a.Calls = append(a.Calls, fmt.Sprintf(format, args...))
}

func (a *Actions) ApplySlice(_ context.Context, s rollout.Slice) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.slice = s
	a.slices = append(a.slices, s)
	a.record("slice %v", s)
	return nil
}

// Slice is the slice last applied.
func (a *Actions) Slice() rollout.Slice {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.slice
}

func (a *Actions) Backfill(_ context.Context, nss []string, reason string) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("backfill %v", nss)
	a.end++
	return a.enqueue(len(nss)), nil
}

func (a *Actions) enqueue(n int) []string {
	if a.pending == nil {
		a.pending = map[string]bool{}
	}
	var ids []string
	for i := 0; i < n; i++ {
		a.next++
		id := fmt.Sprintf("req-%d", a.next)
		a.pending[id] = true
		ids = append(ids, id)
	}
	return ids
}

// SetDivergent makes Divergent answer ds (by default: one key per
// namespace, from a complete round "fake-round").
func (a *Actions) SetDivergent(ds ...rollout.DivergentKeys) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.div = ds
	a.divSet = true
}

func (a *Actions) Divergent(_ context.Context, s rollout.Slice) ([]rollout.DivergentKeys, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.divSet {
		return append([]rollout.DivergentKeys(nil), a.div...), nil
	}
	var out []rollout.DivergentKeys
	for _, ns := range s.Namespaces() {
		out = append(out, rollout.DivergentKeys{Namespace: ns, Round: "fake-round", Complete: true, Keys: [][]byte{[]byte("k-" + ns)}})
	}
	return out, nil
}

// Reemit records "repair <ns> <n keys>" and queues a request.
func (a *Actions) Reemit(_ context.Context, ns string, keys [][]byte, reason string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("repair %s %d", ns, len(keys))
	a.Reemitted += len(keys)
	a.end++
	return a.enqueue(1)[0], nil
}

// Ends answers one offset for every partition: how many records the fake
// was asked to produce so far.
func (a *Actions) Ends(_ context.Context, tps []sink.TopicPartition) ([]rollout.Offset, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []rollout.Offset
	for _, tp := range tps {
		out = append(out, rollout.Offset{Topic: tp.Topic, Partition: tp.Partition, Offset: a.end})
	}
	return out, nil
}

// Passed is false SinkBehind times (one per call), then true.
func (a *Actions) Passed(_ context.Context, ends []rollout.Offset) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.SinkBehind > 0 {
		a.SinkBehind--
		return false, nil
	}
	return true, nil
}

// Requests serves every pending request: the capture role of the fake is instant.
func (a *Actions) Requests(_ context.Context, ids []string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, id := range ids {
		if a.pending[id] {
			n++
			delete(a.pending, id)
		}
	}
	return n, nil
}

func (a *Actions) Partitions(_ context.Context, s rollout.Slice) ([]sink.TopicPartition, error) {
	var out []sink.TopicPartition
	for _, ns := range s.Namespaces() {
		n := a.Topics[ns]
		if n == 0 {
			n = 3
		}
		for p := int32(0); p < n; p++ {
			out = append(out, sink.TopicPartition{Topic: "tidemark." + ns, Partition: p})
		}
	}
	return out, nil
}

func (a *Actions) Pause(_ context.Context, tps []sink.TopicPartition, reason string) ([]sink.TopicPartition, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.paused == nil {
		a.paused = map[sink.TopicPartition]bool{}
	}
	var newly []sink.TopicPartition
	for _, tp := range tps {
		if !a.paused[tp] {
			newly = append(newly, tp)
		}
		a.paused[tp] = true
	}
	a.record("pause %d", len(tps))
	return newly, nil
}

func (a *Actions) Resume(_ context.Context, tps []sink.TopicPartition, reason string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, tp := range tps {
		delete(a.paused, tp)
	}
	a.record("resume %d", len(tps))
	return nil
}

// PausedNow lists the paused partitions.
func (a *Actions) PausedNow() []sink.TopicPartition {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []sink.TopicPartition
	for tp := range a.paused {
		out = append(out, tp)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Topic < out[j].Topic || out[i].Topic == out[j].Topic && out[i].Partition < out[j].Partition
	})
	return out
}

func (a *Actions) Paused(_ context.Context, tps []sink.TopicPartition) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, tp := range tps {
		if !a.paused[tp] {
			return false, nil
		}
	}
	return true, nil
}

func (a *Actions) Rewind(_ context.Context, tps []sink.TopicPartition, reason string) (map[string]any, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("rewind %d", len(tps))
	a.Backlog = 2
	return map[string]any{"partitions": len(tps)}, nil
}

func (a *Actions) CaughtUp(_ context.Context, tps []sink.TopicPartition) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.Backlog > 0 {
		a.Backlog--
		return false, nil
	}
	return true, nil
}

// Count is how many recorded calls start with prefix.
func (a *Actions) Count(prefix string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.Calls {
		if len(c) >= len(prefix) && c[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}
