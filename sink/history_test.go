package sink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"
)

var t0 = time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)

func lagOf(topic string, p int32, secs float64) PartitionLag {
	return PartitionLag{Topic: topic, Partition: p, Committed: 10, End: 10 + int64(secs), RecordsBehind: int64(secs), SecondsBehind: secs}
}

func mustHistory(t *testing.T, every, window time.Duration, maxParts int) *LagHistory {
	t.Helper()
	h, err := NewLagHistory(every, window, maxParts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestLagHistoryRing: a ring keeps the newest window/every samples, oldest
// first, and drops the oldest as new ones come.
func TestLagHistoryRing(t *testing.T) {
	h := mustHistory(t, 10*time.Second, time.Minute, 8) // 6 samples a partition
	for i := range 10 {
		h.Record(t0.Add(time.Duration(i)*10*time.Second), []PartitionLag{lagOf("t", 1, float64(i)), lagOf("t", 0, float64(100+i))})
	}
	at := t0.Add(95 * time.Second)
	v := h.View(at)
	if v.IntervalSeconds != 10 || v.WindowSeconds != 60 || v.MaxPartitions != 8 || !v.At.Equal(at) || v.Untracked != 0 {
		t.Fatalf("view header: %+v", v)
	}
	if len(v.Partitions) != 2 || v.Partitions[0].Partition != 0 || v.Partitions[1].Partition != 1 {
		t.Fatalf("partitions not in order: %+v", v.Partitions)
	}
	for _, ph := range v.Partitions {
		// Samples 4..9 are kept (6 slots); sample 4 at 40 s is inside the
		// window [35 s, 95 s].
		if len(ph.Samples) != 6 {
			t.Fatalf("partition %d: %d samples, want 6: %+v", ph.Partition, len(ph.Samples), ph.Samples)
		}
		base := 0.0
		if ph.Partition == 0 {
			base = 100
		}
		for i, s := range ph.Samples {
			want := t0.Add(time.Duration(4+i) * 10 * time.Second)
			if !s.Time.Equal(want) || s.SecondsBehind != base+float64(4+i) || s.RecordsBehind != int64(base)+int64(4+i) {
				t.Errorf("partition %d sample %d: %+v, want time %v, %v s", ph.Partition, i, s, want, base+float64(4+i))
			}
		}
	}
	// Later, the oldest samples fall out of the window before the ring
	// overwrites them.
	if v := h.View(t0.Add(125 * time.Second)); len(v.Partitions[0].Samples) != 3 || !v.Partitions[0].Samples[0].Time.Equal(t0.Add(70*time.Second)) {
		t.Errorf("view 30 s after the last sample: %+v", v.Partitions[0].Samples)
	}
}

// TestLagHistoryPartitions: partitions without an offset are not sampled;
// a partition unseen for a whole window is forgotten; past maxPartitions
// the least recently sampled ring is reused, and current partitions are
// never pushed out by new ones (those are counted as untracked).
func TestLagHistoryPartitions(t *testing.T) {
	h := mustHistory(t, time.Second, 10*time.Second, 3)
	h.Record(t0, []PartitionLag{lagOf("t", 0, 1), {Topic: "t", Partition: 9, Committed: -1}})
	if v := h.View(t0); len(v.Partitions) != 1 || v.Partitions[0].Partition != 0 {
		t.Fatalf("a partition with no committed offset was sampled: %+v", v.Partitions)
	}
	// Five partitions now, three rings: 0 keeps its ring (current), 1 and 2
	// get the free ones, 3 and 4 are untracked.
	five := []PartitionLag{lagOf("t", 0, 1), lagOf("t", 1, 1), lagOf("t", 2, 1), lagOf("t", 3, 1), lagOf("t", 4, 1)}
	h.Record(t0.Add(time.Second), five)
	v := h.View(t0.Add(time.Second))
	if len(v.Partitions) != 3 || v.Untracked != 2 || v.Partitions[2].Partition != 2 || len(v.Partitions[0].Samples) != 2 {
		t.Fatalf("over the bound: %+v", v)
	}
	// The daemon gives up 0..2 and takes 3 and 4: they reuse the rings of
	// the least recently sampled partitions, whose samples go with them.
	h.Record(t0.Add(2*time.Second), five[3:])
	v = h.View(t0.Add(2 * time.Second))
	got := []int32{}
	for _, p := range v.Partitions {
		got = append(got, p.Partition)
		if (p.Partition == 3 || p.Partition == 4) && len(p.Samples) != 1 {
			t.Errorf("partition %d: %d samples, want its own one", p.Partition, len(p.Samples))
		}
	}
	// 0, 1 and 2 were last sampled together: ties go to the lowest.
	if fmt.Sprint(got) != "[2 3 4]" || v.Untracked != 0 {
		t.Errorf("after the move: partitions %v (untracked %d), want [2 3 4]", got, v.Untracked)
	}
	// A window after its last sample, 2 is forgotten; 3 and 4 keep theirs.
	h.Record(t0.Add(11*time.Second), five[3:])
	v = h.View(t0.Add(11 * time.Second))
	if len(v.Partitions) != 2 || v.Partitions[0].Partition != 3 || len(v.Partitions[0].Samples) != 2 || len(v.Partitions[1].Samples) != 2 {
		t.Errorf("a partition gone for a window is still kept: %+v", v.Partitions)
	}
	if len(h.rings) != 2 {
		t.Errorf("%d rings held, want 2", len(h.rings))
	}
}

// TestLagHistoryBound: the memory the history holds is fixed by its shape,
// not by how long it runs: after the rings fill, recording allocates
// nothing and no ring grows. The bound the daemon's default states is
// checked against the stored sample's real size.
func TestLagHistoryBound(t *testing.T) {
	if sz := unsafe.Sizeof(sample{}); sz != 32 {
		t.Fatalf("a stored sample is %d bytes; the documented bound assumes 32", sz)
	}
	def := mustHistory(t, DefaultHistoryEvery, DefaultHistoryWindow, DefaultHistoryMaxPartitions)
	if def.size != 360 || def.Bytes() != 1024*360*32 {
		t.Fatalf("default history: %d samples a partition, %d bytes at most", def.size, def.Bytes())
	}

	h := mustHistory(t, time.Second, time.Minute, 64)
	var lags []PartitionLag
	for p := range 200 { // more partitions than rings
		lags = append(lags, lagOf("t", int32(p), float64(p)))
	}
	at := t0
	for range 120 { // two windows
		at = at.Add(time.Second)
		h.Record(at, lags)
	}
	allocs := testing.AllocsPerRun(100, func() { at = at.Add(time.Second); h.Record(at, lags) })
	if allocs != 0 {
		t.Errorf("recording into full rings allocates %.0f times", allocs)
	}
	if len(h.rings) != 64 {
		t.Errorf("%d rings, want the bound 64", len(h.rings))
	}
	for tp, r := range h.rings {
		if len(r.buf) != 60 || cap(r.buf) != 60 || r.n != 60 {
			t.Fatalf("ring %v: len %d cap %d n %d, want 60", tp, len(r.buf), cap(r.buf), r.n)
		}
	}
	if v := h.View(at); len(v.Partitions) != 64 || v.Untracked != 200-64 {
		t.Errorf("view: %d partitions, %d untracked", len(v.Partitions), v.Untracked)
	}

	for _, bad := range []struct {
		every, window time.Duration
		max           int
	}{{0, time.Hour, 1}, {time.Minute, time.Second, 1}, {time.Millisecond, time.Hour, 1}, {time.Second, time.Hour, 0}} {
		if _, err := NewLagHistory(bad.every, bad.window, bad.max); err == nil {
			t.Errorf("NewLagHistory(%v, %v, %d) accepted", bad.every, bad.window, bad.max)
		}
	}
}

// TestLagHistoryConcurrent records and reads from several goroutines (run
// with -race): every view is ordered and within the bound.
func TestLagHistoryConcurrent(t *testing.T) {
	h := mustHistory(t, time.Second, 30*time.Second, 8)
	var wg sync.WaitGroup
	var clock sync.Mutex
	at := t0
	tick := func() time.Time {
		clock.Lock()
		defer clock.Unlock()
		at = at.Add(time.Second)
		return at
	}
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				// Each writer samples its own partitions, as a daemon's
				// partitions change hands.
				h.Record(tick(), []PartitionLag{lagOf("t", int32(w*3+i%3), float64(i))})
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 500 {
				clock.Lock()
				now := at
				clock.Unlock()
				v := h.View(now)
				if len(v.Partitions) > 8 {
					t.Errorf("%d partitions over the bound 8", len(v.Partitions))
					return
				}
				for _, p := range v.Partitions {
					if len(p.Samples) > 30 {
						t.Errorf("%d samples in a 30-sample ring", len(p.Samples))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	v := h.View(at)
	for _, p := range v.Partitions {
		for i := 1; i < len(p.Samples); i++ {
			if !p.Samples[i].Time.After(p.Samples[i-1].Time) {
				t.Fatalf("partition %d: samples out of order at %d: %v then %v", p.Partition, i, p.Samples[i-1].Time, p.Samples[i].Time)
			}
		}
	}
}

// TestLagHistoryRun samples at once and then every interval, and returns
// when its context ends.
func TestLagHistoryRun(t *testing.T) {
	h := mustHistory(t, 20*time.Millisecond, time.Second, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx, func() []PartitionLag { return []PartitionLag{lagOf("t", 0, 2)} }) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		v := h.View(time.Now())
		if len(v.Partitions) == 1 && len(v.Partitions[0].Samples) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("3 samples not taken in 10 s: %+v", v)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
