package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Leases are records in the checkpoints store that one daemon holds by
// rewriting them (compare-and-swap) every third of the lease duration. A
// lease is free when its record is gone, or when an observer has seen the
// same version of it for a whole lease duration by its own clock: no daemon
// compares another's wall clock, so clock skew between hosts cannot hand a
// live lease to a second holder (client-go's leader election observes
// renewals the same way). Whoever finds a lease free takes it by
// compare-and-swap on the version it observed, so only one of several
// observers wins; the former holder's next renewal then fails and it stops.

// observer remembers, per key, which version it last saw and since when.
type observer struct {
	now  func() time.Time
	mu   sync.Mutex
	seen map[string]observed
}

type observed struct {
	version int64
	since   time.Time
}

func newObserver() *observer { return &observer{now: time.Now, seen: map[string]observed{}} }

// stale reports whether key has stayed at version for at least d since this
// observer first saw that version. A version seen for the first time is
// never stale: an observer that has just started waits a whole lease.
func (o *observer) stale(key string, version int64, d time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.seen[key]
	if !ok || s.version != version {
		o.seen[key] = observed{version: version, since: o.now()}
		return false
	}
	return o.now().Sub(s.since) >= d
}

// changed reports whether key is at another version than the first one
// this observer saw: its holder renewed it, so it is alive.
func (o *observer) changed(key string, version int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.seen[key]
	return ok && s.version != version
}

// forget drops what the observer knows of key.
func (o *observer) forget(key string) {
	o.mu.Lock()
	delete(o.seen, key)
	o.mu.Unlock()
}

// lease is a record this process holds: a goroutine renews it until stop,
// and lost is closed when a renewal finds another writer took the record.
type lease struct {
	st    checkpoints.Store
	key   string
	every time.Duration

	mu     sync.Mutex // guards ver, beat and render
	ver    int64
	beat   int64
	render func(beat int64, now time.Time) any

	lost     chan struct{}
	lostOnce sync.Once
	stopc    chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// hold starts renewing the record at key, which this process wrote at
// version ver, every period; render returns the record to write for a beat.
func hold(ctx context.Context, st checkpoints.Store, key string, ver int64, period time.Duration,
	render func(beat int64, now time.Time) any) *lease {
	l := &lease{st: st, key: key, every: period, ver: ver, render: render, lost: make(chan struct{}),
		stopc: make(chan struct{}), done: make(chan struct{})}
	go l.renewLoop(ctx)
	return l
}

func (l *lease) renewLoop(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.stopc:
			return
		case <-t.C:
		}
		err := l.renew(ctx)
		if errors.Is(err, checkpoints.ErrConflict) {
			l.lostOnce.Do(func() { close(l.lost) })
			return
		}
		// Another error (the store unreachable) is retried at the next tick;
		// if it lasts a lease, another daemon takes the record and the next
		// renewal here finds the conflict.
	}
}

// renew rewrites the record with the next beat.
func (l *lease) renew(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := json.Marshal(l.render(l.beat+1, time.Now().UTC()))
	if err != nil {
		return err
	}
	ver, err := l.st.CompareAndSwap(ctx, l.key, l.ver, b)
	if err != nil {
		return err
	}
	l.ver, l.beat = ver, l.beat+1
	return nil
}

// update changes what the record says and writes it at once.
func (l *lease) update(ctx context.Context, render func(beat int64, now time.Time) any) error {
	l.mu.Lock()
	l.render = render
	l.mu.Unlock()
	return l.renew(ctx)
}

// Lost is closed once another writer took the record.
func (l *lease) Lost() <-chan struct{} { return l.lost }

// end stops the renewals and writes the record's last value (nil deletes
// it), unless another writer took it meanwhile (ErrConflict).
func (l *lease) end(ctx context.Context, last any) error {
	l.stopOnce.Do(func() { close(l.stopc) })
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	var b []byte
	if last != nil {
		var err error
		if b, err = json.Marshal(last); err != nil {
			return err
		}
	}
	ver, err := l.st.CompareAndSwap(ctx, l.key, l.ver, b)
	if err != nil {
		return fmt.Errorf("reconcile: release %s: %w", l.key, err)
	}
	l.ver = ver
	return nil
}

// getVersioned reads a JSON record and its version; found is false (with
// the version to create it at) when the key has no value.
func getVersioned[T any](ctx context.Context, st checkpoints.Store, key string) (v T, ver int64, found bool, err error) {
	b, ver, err := st.GetVersion(ctx, key)
	if errors.Is(err, checkpoints.ErrNotFound) {
		return v, ver, false, nil
	}
	if err != nil {
		return v, 0, false, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, 0, false, fmt.Errorf("reconcile: decode %s: %w", key, err)
	}
	return v, ver, true, nil
}

// putVersioned writes a JSON record by compare-and-swap.
func putVersioned(ctx context.Context, st checkpoints.Store, key string, old int64, v any) (int64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	return st.CompareAndSwap(ctx, key, old, b)
}
