package leader

import (
	"errors"
	"fmt"
)

// ErrDeposed matches a DeposedError.
var ErrDeposed = errors.New("leader: deposed")

// DeposedError refuses a write made because this daemon leads: the key
// already carries a newer term's epoch, so another daemon took office since
// this one did (this one was frozen, or cut off, past its session timeout).
type DeposedError struct {
	Key     string // the refused key
	Epoch   int64  // this daemon's term
	Current int64  // the newer term the key carries; 0 if this daemon leads no term
}

func (e *DeposedError) Error() string {
	if e.Epoch == 0 {
		return fmt.Sprintf("leader: write of %s refused: this daemon is not the leader (GET /v1/leader names it)", e.Key)
	}
	return fmt.Sprintf("leader: write of %s refused: it carries leadership epoch %d, newer than this daemon's %d; "+
		"another daemon took office, this one steps down", e.Key, e.Current, e.Epoch)
}

// Is makes errors.Is(err, ErrDeposed) true.
func (e *DeposedError) Is(target error) bool { return target == ErrDeposed }

// Check is the fencing rule for a leader's write of key: a daemon writing
// under epoch mine may replace a value written under stored only if stored
// is not newer (0 means no term wrote it: operators' writes keep the stored
// epoch, so they never raise the bar). mine 0 (no term) is always refused.
func Check(key string, mine, stored int64) error {
	if mine <= 0 || stored > mine {
		return &DeposedError{Key: key, Epoch: mine, Current: stored}
	}
	return nil
}

// Deposed records that component's write under epoch was refused by
// fencing: it is counted in tidemark_leader_fenced_writes_total and, if
// epoch is still this daemon's term, the daemon steps down and joins the
// group again (the partition may still be assigned to it, as after a false
// alarm; a new assignment brings a new, higher epoch).
func (e *Elector) Deposed(component string, err error) {
	e.fenced.WithLabelValues(component).Inc()
	var de *DeposedError
	if !errors.As(err, &de) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.epoch == 0 || e.epoch != de.Epoch {
		return // already stepped down, or a later term
	}
	e.log.Error("a newer leader took office; stepping down", "component", component, "err", err)
	e.setLocked(false, 0, "fenced by a newer leader's epoch")
	e.askRejoin()
}
