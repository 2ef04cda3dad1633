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
	// Source names the evidence: the reconcile round(s) the value came from
	// ("app.users:<report id>", comma-separated), empty for a sample of the
	// daemon's own metrics. One source fires a trigger at most once.
	Source string `json:"source,omitempty"`
	// Started is when the evidence began to be gathered: the (earliest)
	// round's start, or At for a sample. Only evidence that started after an
	// action's effect was applied judges that action, and only evidence that
	// started after a stage began (and its widened slice was back-filled)
	// speaks about the stage.
	Started time.Time `json:"started"`
}

// started is s.Started, or At when the signal did not say.
func (s Sample) started() time.Time {
	if s.Started.IsZero() {
		return s.At
	}
	return s.Started
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
	// FiredOn is the evidence of the last firing (a round, or a sample's time).
	FiredOn string `json:"fired_on,omitempty"`
	// Pending is true while the last firing waits for its effect to be
	// applied and then for evidence that started after it; it counts as an
	// attempt only once judged, and the trigger does not fire again meanwhile.
	Pending bool `json:"pending"`
	// Effect says where the last firing's effect is (what it waits for).
	Effect string `json:"effect,omitempty"`
	// EffectApplied is when the effect was seen applied.
	EffectApplied time.Time `json:"effect_applied,omitzero"`
	// Judged is the evidence that judged the last firing, and its verdict.
	Judged string `json:"judged,omitempty"`
}

// TriggerState is what a trigger remembers across restarts.
type TriggerState struct {
	// Attempts counts judged firings: those a fresh round (or sample) has
	// reported on since their effect was applied.
	Attempts  int       `json:"attempts"`
	LastFired time.Time `json:"last_fired,omitzero"`
	Exhausted bool      `json:"exhausted,omitempty"`
	// FiredOn is the source of the evidence the last firing acted on.
	FiredOn string `json:"fired_on,omitempty"`
	// Effect follows the last firing until it is judged; nil when judged.
	Effect *Effect `json:"effect,omitempty"`
	// Judged names the evidence that judged the last firing, and how.
	Judged   string    `json:"judged,omitempty"`
	JudgedAt time.Time `json:"judged_at,omitzero"`
}

// Effect phases, in order.
const (
	// PhaseReemit: a repair's keys are being re-emitted, rate-limited.
	PhaseReemit = "reemit"
	// PhaseCapture: capture requests are queued.
	PhaseCapture = "capture"
	// PhaseSink: the records are in Kafka; the sink must commit past Ends.
	PhaseSink = "sink"
	// PhaseApplied: the effect is applied (AppliedAt).
	PhaseApplied = "applied"
)

// Effect follows an action (or a slice widening's backfill) from the moment
// it was decided to the moment it is applied in Cassandra: capture took its
// requests and the sink committed past every record they produced.
type Effect struct {
	Action Action `json:"action"`
	Phase  string `json:"phase"`
	// Queue holds a repair's keys not yet re-emitted.
	Queue []DivergentKeys `json:"queue,omitempty"`
	// Requests are capture requests still to be taken.
	Requests []string `json:"requests,omitempty"`
	// Ends are the slice's partition ends once capture took every request:
	// the re-emitted records are below them.
	Ends      []Offset  `json:"ends,omitempty"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// Waiting says, for status, what the effect waits for now.
	Waiting string `json:"waiting,omitempty"`
	// Keys counts a repair's keys; Emitted those re-emitted so far.
	Keys    int `json:"keys,omitempty"`
	Emitted int `json:"emitted,omitempty"`
}

// applied reports whether the effect is in Cassandra.
func (ef *Effect) applied() bool { return ef != nil && ef.Phase == PhaseApplied }

func (ef *Effect) text() string {
	if ef == nil {
		return ""
	}
	if ef.Phase == PhaseApplied {
		return "applied at " + ef.AppliedAt.Format(time.RFC3339) + "; waiting for evidence that started after it"
	}
	return ef.Phase + ": " + ef.Waiting
}

func (t Trigger) status(h *hold, ts TriggerState, now time.Time) TriggerStatus {
	st := TriggerStatus{Name: t.Name, Signal: t.Signal, Action: t.Action, Condition: bounds(t.Below, t.Above, "<", ">"),
		Observed: orNoData(h.obs), Value: h.value, For: t.For.Seconds(), Attempts: ts.Attempts, MaxAttempts: t.MaxAttempts,
		LastFired: ts.LastFired, Exhausted: ts.Exhausted, FiredOn: ts.FiredOn, Pending: ts.Effect != nil,
		Effect: ts.Effect.text(), Judged: ts.Judged}
	if ts.Effect.applied() {
		st.EffectApplied = ts.Effect.AppliedAt
	}
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
