package checkpoints

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Conditional writes in the Kafka store, and how compaction keeps them
// correct.
//
// A CompareAndSwap is a request record under a key of its own
// ("_cas/<writer>/<seq>") on the home partition of the key K it changes.
// Every reader decides it in log order: taken if K's version is then still
// the one it expects. Deciding needs K's state just before the request, and
// so, for a reader that replays the topic from the start, every earlier
// record of K. Unique keys are never compacted, so without more the topic
// would keep every request of every change for good.
//
// After its request is taken, the writer writes a settle record (also
// under a unique "_cas/" key, on the same partition): K's state as of an
// offset, "through", up to which it had read the partition. A reader that
// applies a settle whose through is not older than the newest it applied
// takes that state and decides again, from it, every record of K after
// through that it has already read (the "pending" ones). Then the writer
// tombstones the records of K the newest settle makes unnecessary: every
// request at or below its through, every older settle.
//
// Why a reader of the compacted topic reaches the same state: compaction
// removes only tombstoned records, and tidemark tombstones only records at
// or below the through of a settle that was in the log first (requests),
// or older than it (settles). The settle with the highest through is never
// tombstoned. So a reader reaching the end of the log has applied it, and
// every record of K after its through is still there: it took the state
// the settle holds and decided each later record from it, in order, as
// every reader that read the whole history did. Before that settle, a
// reader that misses removed records may decide some records differently;
// the settle replaces all of that. Its own requests are written after Open
// read to the end, so a writer learns its outcome from a correct state.
//
// (The one assumption, as for any compacted topic: a reader that is not
// opening reads the records it waits for before the cleaner removes them,
// which takes a closed segment: segment.ms is a day.)

// casRecord is the payload of a conditional record.
type casRecord struct {
	Key    string `json:"key"`
	Expect int64  `json:"expect"`
	// Any makes the record unconditional (a Delete of a key that has
	// conditional records, see Delete).
	Any    bool   `json:"any,omitempty"`
	Delete bool   `json:"delete,omitempty"`
	Value  []byte `json:"value,omitempty"`
}

// casSettle is the payload of a settle record: Key's state after every
// record of its partition up to and including offset Through.
type casSettle struct {
	Key     string `json:"key"`
	Through int64  `json:"through"`
	Version int64  `json:"version"`
	Present bool   `json:"present"`
	Value   []byte `json:"value,omitempty"`
}

// casLog is what a reader keeps of one key that conditional records
// changed, to apply settles and to know which records they supersede.
type casLog struct {
	through    int64  // the newest applied settle's through; -1 before one
	throughKey string // that settle's record key
	// pending are the key's records after through, in log order: what a
	// settle decides again.
	pending []casEvent
	// live are the key's "_cas/" records not yet tombstoned, by record key.
	live map[string]casLive
}

// casEvent is one record of a key, conditional or (for a key that has
// conditional records) plain.
type casEvent struct {
	rkey   string
	writer string
	part   int32
	off    int64
	c      casRecord
	plain  bool
}

type casLive struct {
	off     int64
	settle  bool
	through int64 // for a settle
}

// CompareAndSwap writes a conditional record: the key, the version it
// expects and the new value, under a record key of its own
// ("_cas/<writer>/<seq>") on the key's partition. Every reader applies the
// log in the same order and takes the record only if the key's version is
// then still the expected one, so every daemon makes the same decision;
// the writer learns its outcome when it reads its own record back. A
// rejected record changes nothing. Once the record is taken, CompareAndSwap
// settles the key and tombstones the records the settle supersedes (see
// the comment at the top of this file), so the topic keeps about one
// record per key however often it changes; should that fail, the swap has
// still happened, and the key's next swap cleans up.
//
// Mixing plain Put with CompareAndSwap on one key stays consistent in log
// order, but keep such keys to CompareAndSwap (Update).
func (s *KafkaStore) CompareAndSwap(ctx context.Context, key string, old int64, value []byte) (int64, error) {
	if err := s.checkKey(key); err != nil {
		return 0, err
	}
	return s.conditional(ctx, casRecord{Key: key, Expect: old, Delete: value == nil, Value: value})
}

func (s *KafkaStore) conditional(ctx context.Context, c casRecord) (int64, error) {
	if err := s.stopped(); err != nil {
		return 0, err
	}
	ctx, cancel := withTimeout(ctx, s.cfg.timeout)
	defer cancel()
	payload, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	seq := s.seq.Add(1)
	rkey := fmt.Sprintf("%s%s/%d", casPrefix, s.writer, seq)
	s.mu.Lock()
	home := int32(s.byKey.Partition(&kgo.Record{Key: []byte(c.Key)}, s.parts))
	s.mu.Unlock()
	acked, err := s.produce(ctx, &kgo.Record{Key: []byte(rkey), Value: appendFrame(nil, rkey, kindCAS, s.writer, seq, payload), Partition: home})
	if err != nil {
		return 0, s.writeErr("compare-and-swap", c.Key, err)
	}
	r := acked[0]
	if err := s.waitApplied(ctx, r.Partition, r.Offset); err != nil {
		return 0, s.readErr(r, err)
	}
	s.mu.Lock()
	ok, known := s.casResults[rkey]
	delete(s.casResults, rkey)
	s.mu.Unlock()
	switch {
	case !known:
		return 0, fmt.Errorf("checkpoints: compare-and-swap of %q: record %s read back without a decision (damaged?)", c.Key, rkey)
	case !ok:
		return 0, ErrConflict
	}
	if err := s.settle(ctx, c.Key, home); err != nil {
		s.cfg.log.Warn("checkpoints: could not settle a compare-and-swap; its key's next one will", "key", c.Key, "err", err)
	}
	return r.Offset + 1, nil
}

// settle writes key's state as this store has read it, then tombstones the
// records of key that the newest settle supersedes.
func (s *KafkaStore) settle(ctx context.Context, key string, home int32) error {
	s.mu.Lock()
	e := s.kv[key]
	st := casSettle{Key: key, Through: s.applied[home] - 1}
	if e != nil && e.intact {
		st.Version, st.Present, st.Value = e.version, e.present, e.value
	}
	s.mu.Unlock()
	payload, err := json.Marshal(st)
	if err != nil {
		return err
	}
	seq := s.seq.Add(1)
	rkey := fmt.Sprintf("%s%s/%d", casPrefix, s.writer, seq)
	acked, err := s.produce(ctx, &kgo.Record{Key: []byte(rkey), Value: appendFrame(nil, rkey, kindSettle, s.writer, seq, payload), Partition: home})
	if err != nil {
		return s.writeErr("settle", key, err)
	}
	if err := s.waitApplied(ctx, acked[0].Partition, acked[0].Offset); err != nil {
		return s.readErr(acked[0], err)
	}
	s.mu.Lock()
	old := s.supersededLocked(key)
	s.mu.Unlock()
	if len(old) == 0 {
		return nil
	}
	tombs := make([]*kgo.Record, len(old))
	for i, k := range old {
		tombs[i] = &kgo.Record{Key: []byte(k), Partition: home}
	}
	if _, err := s.produce(ctx, tombs...); err != nil {
		return s.writeErr("tombstone superseded records of", key, err)
	}
	return nil
}

// supersededLocked returns the record keys of key's live "_cas/" records
// that its newest applied settle makes unnecessary: requests at or below
// its through, and every other settle not newer than it.
func (s *KafkaStore) supersededLocked(key string) []string {
	l := s.casKeys[key]
	if l == nil || l.throughKey == "" {
		return nil
	}
	var out []string
	for rk, r := range l.live {
		if (!r.settle && r.off <= l.through) || (r.settle && rk != l.throughKey && r.through <= l.through) {
			out = append(out, rk)
		}
	}
	sort.Strings(out)
	return out
}

// casLogLocked returns key's casLog, creating it.
func (s *KafkaStore) casLogLocked(key string) *casLog {
	l := s.casKeys[key]
	if l == nil {
		l = &casLog{through: -1, live: map[string]casLive{}}
		s.casKeys[key] = l
	}
	return l
}

// applyCASLocked applies a "_cas/" record: a request, a settle, or the
// tombstone of either.
func (s *KafkaStore) applyCASLocked(r *kgo.Record) {
	rkey := string(r.Key)
	if r.Value == nil {
		if key, ok := s.casOwner[rkey]; ok {
			delete(s.casOwner, rkey)
			if l := s.casKeys[key]; l != nil {
				delete(l.live, rkey)
			}
		}
		return
	}
	f, err := decodeFrame(r.Key, r.Value)
	if err == nil && f.kind != kindCAS && f.kind != kindSettle {
		err = fmt.Errorf("frame kind %q on a compare-and-swap key", f.kind)
	}
	if err != nil {
		s.damagedLocked(r, err)
		return
	}
	if f.kind == kindSettle {
		var st casSettle
		if err := json.Unmarshal(f.payload, &st); err != nil || st.Key == "" || strings.HasPrefix(st.Key, reservedPrefix) {
			s.damagedLocked(r, fmt.Errorf("settle record: %v (key %q)", err, st.Key))
			return
		}
		s.applySettleLocked(r, st)
		return
	}
	var c casRecord
	err = json.Unmarshal(f.payload, &c)
	if err == nil && (c.Key == "" || strings.HasPrefix(c.Key, reservedPrefix)) {
		err = fmt.Errorf("compare-and-swap of reserved key %q", c.Key)
	}
	if err != nil {
		s.damagedLocked(r, err)
		return
	}
	ev := casEvent{rkey: rkey, writer: f.writer, part: r.Partition, off: r.Offset, c: c}
	l := s.casLogLocked(c.Key)
	l.live[rkey] = casLive{off: r.Offset}
	s.casOwner[rkey] = c.Key
	l.pending = append(l.pending, ev)
	s.decideLocked(ev, false)
}

// applySettleLocked takes the state a settle holds unless a settle with a
// later through came first, and decides again every record of the key read
// since that point.
func (s *KafkaStore) applySettleLocked(r *kgo.Record, st casSettle) {
	rkey := string(r.Key)
	l := s.casLogLocked(st.Key)
	l.live[rkey] = casLive{off: r.Offset, settle: true, through: st.Through}
	s.casOwner[rkey] = st.Key
	if st.Through < l.through {
		return // an older settle that landed late
	}
	l.through, l.throughKey = st.Through, rkey
	e := &kafkaEntry{intact: true, part: r.Partition, version: st.Version, cas: true}
	if st.Present {
		e.value, e.present = bytes.Clone(st.Value), true
	}
	s.kv[st.Key] = e
	keep := l.pending[:0]
	for _, ev := range l.pending {
		if ev.off > st.Through {
			keep = append(keep, ev)
			s.decideLocked(ev, true)
		}
	}
	clear(l.pending[len(keep):])
	l.pending = keep
}

// notePlainLocked records a plain write of a key that conditional records
// changed, for a later settle to apply again in its place.
func (s *KafkaStore) notePlainLocked(key string, r *kgo.Record, value []byte) {
	l := s.casLogLocked(key)
	l.pending = append(l.pending, casEvent{part: r.Partition, off: r.Offset, plain: true,
		c: casRecord{Key: key, Any: true, Delete: r.Value == nil, Value: bytes.Clone(value)}})
}

// decideLocked decides a conditional record (or applies a plain one)
// against the key's current state. again is set when a settle decides it
// a second time: its writer, if this store, may have collected the first
// outcome already (and a live reader's second decision is the same).
func (s *KafkaStore) decideLocked(ev casEvent, again bool) {
	c := ev.c
	e := s.kv[c.Key]
	var cur int64
	if e != nil && e.intact {
		cur = e.version
	}
	ok := c.Any || cur == c.Expect
	if _, waiting := s.casResults[ev.rkey]; !ev.plain && ev.writer == s.writer && (!again || waiting) {
		s.casResults[ev.rkey] = ok
	}
	if !ok {
		return
	}
	ne := &kafkaEntry{intact: true, part: ev.part, version: ev.off + 1, cas: true}
	if !c.Delete {
		ne.value, ne.present = bytes.Clone(c.Value), true
	}
	s.kv[c.Key] = ne
}
