package checkpoints

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
)

// ErrNotEmpty is Copy's refusal to copy into a store that holds keys.
var ErrNotEmpty = errors.New("checkpoints: the destination already holds keys; copy only into an empty store")

// CopyResult says what Copy moved.
type CopyResult struct {
	Keys         int `json:"keys"`
	AuditEntries int `json:"audit_entries"`
}

// Copy moves every key and every audit entry of src into dst, which must
// hold no key yet: the move from a file store to the Kafka store when a
// deployment grows past one machine. Audit entries keep their times and
// order. Every key is read back from dst and compared before Copy returns.
// Nothing may write to either store meanwhile (stop the daemons).
func Copy(ctx context.Context, dst, src Store) (CopyResult, error) {
	var res CopyResult
	have, err := dst.List(ctx, "")
	if err != nil {
		return res, fmt.Errorf("checkpoints: copy: read the destination: %w", err)
	}
	if len(have) > 0 {
		// Its state would mix with the copied one: a resume token from one
		// and backfill progress from the other is not a state anyone had.
		return res, fmt.Errorf("%w (%d keys)", ErrNotEmpty, len(have))
	}
	kv, err := src.List(ctx, "")
	if err != nil {
		return res, fmt.Errorf("checkpoints: copy: read the source: %w", err)
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := dst.Put(ctx, k, kv[k]); err != nil {
			return res, fmt.Errorf("checkpoints: copy %s: %w", k, err)
		}
		res.Keys++
	}
	// The destination may already hold audit entries (a daemon that started
	// on it and wrote no state yet): the copy adds to them.
	before, err := dst.Audit(ctx, AuditFilter{})
	if err != nil {
		return res, fmt.Errorf("checkpoints: copy: read the destination's audit log: %w", err)
	}
	audit, err := src.Audit(ctx, AuditFilter{})
	if err != nil {
		return res, fmt.Errorf("checkpoints: copy: read the source's audit log: %w", err)
	}
	for _, e := range audit {
		if err := dst.Append(ctx, e); err != nil {
			return res, fmt.Errorf("checkpoints: copy audit entry of %s: %w", e.Time, err)
		}
		res.AuditEntries++
	}
	for _, k := range keys {
		got, err := dst.Get(ctx, k)
		if err != nil {
			return res, fmt.Errorf("checkpoints: copy: read back %s: %w", k, err)
		}
		if !bytes.Equal(got, kv[k]) {
			return res, fmt.Errorf("checkpoints: copy: %s reads back different from the source", k)
		}
	}
	if n, err := dst.Audit(ctx, AuditFilter{}); err != nil || len(n) != len(before)+len(audit) {
		return res, fmt.Errorf("checkpoints: copy: the destination's audit log has %d entries, want %d (%v)", len(n), len(before)+len(audit), err)
	}
	return res, nil
}
