// Package checkpointstest provides an in-memory checkpoints.Store for unit tests.
package checkpointstest

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Memory is a checkpoints.Store that keeps everything in memory.
type Memory struct {
	mu    sync.Mutex
	kv    map[string][]byte
	ver   map[string]int64 // version of each key's value; absent for 0
	seq   int64            // the last version handed out
	audit []checkpoints.AuditEntry
}

var _ checkpoints.Store = (*Memory)(nil)

// New returns an empty store.
func New() *Memory { return &Memory{kv: map[string][]byte{}, ver: map[string]int64{}} }

func (m *Memory) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.kv[key]
	if !ok {
		return nil, checkpoints.ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

func (m *Memory) Put(_ context.Context, key string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kv[key] = append([]byte(nil), value...)
	m.seq++
	m.ver[key] = m.seq
	return nil
}

func (m *Memory) GetVersion(_ context.Context, key string) ([]byte, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.kv[key]
	if !ok {
		return nil, m.ver[key], checkpoints.ErrNotFound
	}
	return append([]byte(nil), v...), m.ver[key], nil
}

func (m *Memory) CompareAndSwap(_ context.Context, key string, old int64, value []byte) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ver[key] != old {
		return 0, checkpoints.ErrConflict
	}
	m.seq++
	m.ver[key] = m.seq
	if value == nil {
		delete(m.kv, key)
	} else {
		m.kv[key] = append([]byte(nil), value...)
	}
	return m.seq, nil
}

func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.kv, key)
	m.seq++
	m.ver[key] = m.seq
	return nil
}

func (m *Memory) List(_ context.Context, prefix string) (map[string][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range m.kv {
		if strings.HasPrefix(k, prefix) {
			out[k] = append([]byte(nil), v...)
		}
	}
	return out, nil
}

func (m *Memory) Append(_ context.Context, e checkpoints.AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.audit = append(m.audit, e)
	return nil
}

func (m *Memory) Audit(_ context.Context, f checkpoints.AuditFilter) ([]checkpoints.AuditEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []checkpoints.AuditEntry
	for _, e := range m.audit {
		if f.Match(e) {
			out = append(out, e)
		}
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

// AuditLog returns every entry in the order it was appended.
func (m *Memory) AuditLog(context.Context) ([]checkpoints.AuditEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]checkpoints.AuditEntry(nil), m.audit...), nil
}

// AuditLogSince returns the entry at index n-1 and every entry after it, in
// the order they were appended (see checkpoints.AuditTailReader).
func (m *Memory) AuditLogSince(_ context.Context, n int) (*checkpoints.AuditEntry, []checkpoints.AuditEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n < 0 || n > len(m.audit) {
		return nil, nil, nil
	}
	tail := append([]checkpoints.AuditEntry(nil), m.audit[n:]...)
	if n == 0 {
		return nil, tail, nil
	}
	last := m.audit[n-1]
	return &last, tail, nil
}

var _ checkpoints.AuditTailReader = (*Memory)(nil)

// Tamper replaces the audit log with what edit returns, as someone with
// write access to the storage could, for tests of the audit chain.
func (m *Memory) Tamper(edit func([]checkpoints.AuditEntry) []checkpoints.AuditEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.audit = edit(append([]checkpoints.AuditEntry(nil), m.audit...))
}

func (m *Memory) Close() error { return nil }
