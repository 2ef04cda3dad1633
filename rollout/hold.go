package rollout

import (
	"fmt"
	"strconv"
	"time"
)

// Sample is one reading of a signal.
type Sample struct {
	Value float64 `json:"value"`
	// At is when the value was measured: a reconcile round's end, or now for
	// a windowed metric. Readings from before the current stage began are not
	// evidence about it and count as no data.
	At time.Time `json:"at"`
}

// Observation of a condition at one evaluation.
const (
	ObsOK     = "ok"
	ObsBreach = "breach"
	ObsNoData = "no-data"
)

// hold follows one condition across evaluations: how long it has been ok, or
// breached, without interruption. A reading without data ends both streaks,
// so "held for 10m" always means ten minutes of evidence.
type hold struct {
	obs       string
	value     *float64
	since     time.Time // start of the current streak (ok or breach)
	lastValue float64
}

func (h *hold) observe(now time.Time, s Sample, has bool, ok bool) {
	obs := ObsNoData
	switch {
	case has && ok:
		obs = ObsOK
	case has:
		obs = ObsBreach
	}
	if obs != h.obs || h.since.IsZero() {
		h.since = now
	}
	h.obs = obs
	h.value = nil
	if has {
		v := s.Value
		h.value = &v
	}
}

// heldFor is how long the current observation has lasted.
func (h *hold) heldFor(now time.Time) time.Duration {
	if h.obs == "" || h.obs == ObsNoData {
		return 0
	}
	return now.Sub(h.since)
}

func (h *hold) reset() { *h = hold{} }

// Gate states.
const (
	Pass    = "pass"
	Fail    = "fail"
	Pending = "pending"
)

// GateStatus is one gate's evaluation.
type GateStatus struct {
	Name      string   `json:"name"`
	Signal    string   `json:"signal"`
	State     string   `json:"state"`
	Observed  string   `json:"observed"`
	Value     *float64 `json:"value,omitempty"`
	Threshold string   `json:"threshold"`
	// HeldFor is how long the current observation (ok or breach) has lasted, in seconds.
	HeldFor float64 `json:"held_for_seconds"`
	Window  float64 `json:"window_seconds"`
}

// state is pass once ok has held for the window and fail once a breach has;
// anything shorter, or no data, is pending. A blip is therefore never a
// verdict: it ends the streak it interrupts and must itself last a window.
func (g Gate) evaluate(h *hold, now time.Time) GateStatus {
	st := GateStatus{Name: g.Name, Signal: g.Signal, State: Pending, Observed: orNoData(h.obs), Value: h.value,
		Threshold: bounds(g.Min, g.Max, ">=", "<="), HeldFor: h.heldFor(now).Seconds(), Window: g.Window.Seconds()}
	if h.heldFor(now) >= g.Window {
		switch h.obs {
		case ObsOK:
			st.State = Pass
		case ObsBreach:
			st.State = Fail
		}
	}
	return st
}

func (g Gate) ok(v float64) bool {
	return (g.Max == nil || v <= *g.Max) && (g.Min == nil || v >= *g.Min)
}

// breached is the trigger's condition.
func (t Trigger) breached(v float64) bool {
	return (t.Above != nil && v > *t.Above) || (t.Below != nil && v < *t.Below)
}

// TriggerStatus is one trigger's evaluation and bookkeeping.
type TriggerStatus struct {
	Name      string   `json:"name"`
	Signal    string   `json:"signal"`
	Action    Action   `json:"action"`
	Condition string   `json:"condition"`
	Observed  string   `json:"observed"`
	Value     *float64 `json:"value,omitempty"`
	// HeldFor is how long the condition has held, in seconds (0 unless breached).
	HeldFor     float64   `json:"held_for_seconds"`
	For         float64   `json:"for_seconds"`
	Attempts    int       `json:"attempts"`
	MaxAttempts int       `json:"max_attempts"`
	LastFired   time.Time `json:"last_fired,omitzero"`
	// CooldownLeft is how long until it may fire again automatically, in seconds.
	CooldownLeft float64 `json:"cooldown_left_seconds"`
	Exhausted    bool    `json:"exhausted"`
}

// TriggerState is what a trigger remembers across restarts.
type TriggerState struct {
	Attempts  int       `json:"attempts"`
	LastFired time.Time `json:"last_fired,omitzero"`
	Exhausted bool      `json:"exhausted,omitempty"`
}

func (t Trigger) status(h *hold, ts TriggerState, now time.Time) TriggerStatus {
	st := TriggerStatus{Name: t.Name, Signal: t.Signal, Action: t.Action, Condition: bounds(t.Below, t.Above, "<", ">"),
		Observed: orNoData(h.obs), Value: h.value, For: t.For.Seconds(), Attempts: ts.Attempts, MaxAttempts: t.MaxAttempts,
		LastFired: ts.LastFired, Exhausted: ts.Exhausted}
	if h.obs == ObsBreach {
		st.HeldFor = h.heldFor(now).Seconds()
	}
	if !ts.LastFired.IsZero() {
		st.CooldownLeft = max(0, t.Cooldown-now.Sub(ts.LastFired)).Seconds()
	}
	return st
}

func orNoData(s string) string {
	if s == "" {
		return ObsNoData
	}
	return s
}

// bounds renders a condition such as ">= 1", "<= 5" or ">= 1 and <= 5"
// (for a trigger: "< 1 or > 5").
func bounds(lo, hi *float64, loOp, hiOp string) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	switch {
	case lo != nil && hi != nil:
		join := " and "
		if loOp == "<" {
			join = " or "
		}
		return fmt.Sprintf("%s %s%s%s %s", loOp, f(*lo), join, hiOp, f(*hi))
	case lo != nil:
		return loOp + " " + f(*lo)
	case hi != nil:
		return hiOp + " " + f(*hi)
	}
	return ""
}
