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
	audit []checkpoints.AuditEntry
}

var _ checkpoints.Store = (*Memory)(nil)

// New returns an empty store.
func New() *Memory { return &Memory{kv: map[string][]byte{}} }

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
	return nil
}

func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.kv, key)
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

func (m *Memory) Close() error { return nil }
