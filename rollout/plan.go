// Package rollout advances a migration one slice at a time: a versioned plan
// of ordered stages, each a slice of the key space with gates that must hold
// for a window before the next stage, and triggers that halt, rewind, repair or
// roll back when a signal stays bad for theirs. It keeps the read-route table
// applications ask (or read from a file) and rehearses triggers as drills.
//
// The Engine owns the one evaluation loop. It reads signals through Signals and
// acts through Actions, two small interfaces the daemon implements over the
// sink, the checkpoints store and Prometheus; tests use fakes
// (rollout/rollouttest). Everything a restart needs — stage, reverted flags,
// trigger attempts, the route table — lives under checkpoints.PrefixRollout.
package rollout

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
)

// Config is the plan: the `rollout:` section of the daemon config.
type Config struct {
	// Version names this revision of the plan; it goes into every audit entry,
	// route file and status answer. Required when stages are given.
	Version string `yaml:"version"`
	// DryRun evaluates everything and audits what it would do, without doing it.
	// Operator commands (advance, rollback, drill) still act.
	DryRun bool `yaml:"dry_run"`
	// Every is how often gates and triggers are evaluated. Default 5s.
	Every time.Duration `yaml:"every"`
	// SignalWindow is the trailing window windowed signals (write p99, error
	// ratio, dead-letter rate) are computed over. Default 1m.
	SignalWindow time.Duration `yaml:"signal_window"`
	// RouteFile is kept equal to GET /v1/route's table (written atomically).
	RouteFile string `yaml:"route_file"`
	// Follow makes this daemon follow the state another daemon's engine
	// decides: it hands its sink the current slice and serves routes, but
	// evaluates nothing and refuses plan commands. Run exactly one daemon
	// without follow per deployment.
	Follow bool `yaml:"follow"`
	// DrillTimeout bounds how long a drill waits for the expected effect. Default 2m.
	DrillTimeout time.Duration `yaml:"drill_timeout"`
	// Repair bounds what a repair trigger may re-emit on its own.
	Repair RepairConfig `yaml:"repair"`
	// Triggers apply to every stage, in addition to each stage's own.
	Triggers []Trigger `yaml:"triggers"`
	Stages   []Stage   `yaml:"stages"`
}

// RepairConfig bounds automatic repair so that it cannot flood the pipeline:
// it re-emits only the divergent keys a round listed, at most MaxKeys of
// them (more holds the plan for a person), KeysPerSecond at a time, and
// waits while the lag is above MaxLagSeconds.
type RepairConfig struct {
	// MaxKeys is the most documents one automatic repair re-emits; a round
	// that found more (or could not list them all) holds the plan instead.
	// Default 1000, at most 1000 (what a round summary lists).
	MaxKeys int `yaml:"max_keys"`
	// KeysPerSecond is the re-emission rate. Default 100.
	KeysPerSecond float64 `yaml:"keys_per_second"`
	// MaxLagSeconds pauses the re-emission while the slice's replication lag
	// is above it. Default 30.
	MaxLagSeconds float64 `yaml:"max_lag_seconds"`
}

// Stage is one step of the plan.
type Stage struct {
	Name  string    `yaml:"name"`
	Slice SliceSpec `yaml:"slice"`
	// Reads is where applications read keys inside the slice: new, shadow
	// (read both, serve legacy, compare) or legacy. Default shadow.
	Reads Mode `yaml:"reads"`
	// Advance is "auto" (advance when every gate passes) or "manual" (wait for
	// `tidemark plan advance`). Default manual.
	Advance  string    `yaml:"advance"`
	Gates    []Gate    `yaml:"gates"`
	Triggers []Trigger `yaml:"triggers"`
}

// SliceSpec selects keys: documents of the listed collections whose key hash
// falls in the first Share of the hash space.
type SliceSpec struct {
	// Collections are namespaces "db.collection".
	Collections []string `yaml:"collections"`
	// Share is a percentage of each collection's key space, e.g. "1%", "12.5%",
	// or "100%". Default 100%.
	Share Share `yaml:"share"`
}

// Share is a part of the key space in basis points (1% = 100).
type Share int

// UnmarshalText reads "1%", "0.5%", "100%" or a bare number of percent.
func (s *Share) UnmarshalText(b []byte) error {
	v := strings.TrimSuffix(strings.TrimSpace(string(b)), "%")
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 100 || math.IsNaN(f) {
		return fmt.Errorf("share %q: want a percentage between 0%% and 100%%", b)
	}
	bp := math.Round(f * 100)
	if math.Abs(bp-f*100) > 1e-6 {
		return fmt.Errorf("share %q: the smallest step is 0.01%% (one basis point)", b)
	}
	if bp == 0 {
		// Zero means "not given" (100%) to WithDefaults; an explicit 0% is
		// a stage that writes nothing, which is no stage.
		return fmt.Errorf("share %q: must be above 0%%", b)
	}
	*s = Share(bp)
	return nil
}

// MarshalText writes the share as a percentage.
func (s Share) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(s)/100, 'f', -1, 64) + "%"), nil
}

// Mode is a read route.
type Mode string

// Read routes.
const (
	Legacy Mode = "legacy"
	Shadow Mode = "shadow"
	New    Mode = "new"
)

// Gate is a condition that must hold continuously for Window before it passes.
type Gate struct {
	Name string `yaml:"name"`
	// Signal is one of the Signal* names.
	Signal string `yaml:"signal"`
	// Max and/or Min bound the signal; the gate holds while the value is inside.
	Max *float64 `yaml:"max"`
	Min *float64 `yaml:"min"`
	// Window the condition must hold (and be breached) continuously. Default 10m.
	Window time.Duration `yaml:"window"`
}

// Trigger fires Action when its condition holds continuously for For.
type Trigger struct {
	Name   string `yaml:"name"`
	Signal string `yaml:"signal"`
	// Above and/or Below: the condition is value > Above or value < Below.
	Above *float64 `yaml:"above"`
	Below *float64 `yaml:"below"`
	// For is the hold window. Default 1m.
	For    time.Duration `yaml:"for"`
	Action Action        `yaml:"action"`
	// Cooldown is the least time between two automatic firings. Default 10m.
	Cooldown time.Duration `yaml:"cooldown"`
	// MaxAttempts automatic firings per stage; the next one halts instead and
	// waits for a person (`tidemark plan resume`). Default 3.
	MaxAttempts int `yaml:"max_attempts"`
}

// Action is what a trigger does.
type Action string

// Actions, from the gentlest.
const (
	Halt         Action = "halt"
	Rewind       Action = "rewind"
	Repair       Action = "repair"
	SoftRollback Action = "soft-rollback"
	HardRollback Action = "hard-rollback"
)

// Signal names gates and triggers can read. A signal without data (no writes
// in the window, no reconcile round since the stage began) leaves a gate
// pending and a trigger quiet.
const (
	// SignalTypeCompat is 1 when `tidemark validate` passes, 0 when it fails.
	SignalTypeCompat = "type_compat"
	// SignalDivergentRows sums divergent rows of the newest reconcile round of
	// each collection in the slice that finished after the stage began.
	SignalDivergentRows = "divergent_rows"
	// SignalDivergenceRatio is divergent rows over rows compared in those rounds.
	SignalDivergenceRatio = "divergence_ratio"
	// SignalLagSeconds is the worst replication lag of the slice's partitions.
	SignalLagSeconds = "lag_seconds"
	// SignalLagRecords is the most records any of the slice's partitions is behind.
	SignalLagRecords = "lag_records"
	// SignalWriteP99 is the sink's write latency p99 in seconds over the signal window.
	SignalWriteP99 = "write_p99_seconds"
	// SignalDeadLetterRate is dead-lettered records per second over the signal window.
	SignalDeadLetterRate = "dead_letter_rate"
	// SignalErrorRatio is failed write attempts over write attempts in the
	// signal window: the error budget a gate spends.
	SignalErrorRatio = "error_ratio"
)

var knownSignals = map[string]bool{SignalTypeCompat: true, SignalDivergentRows: true, SignalDivergenceRatio: true,
	SignalLagSeconds: true, SignalLagRecords: true, SignalWriteP99: true, SignalDeadLetterRate: true, SignalErrorRatio: true}

// repairKeysLimit is the most keys a round summary lists
// (checkpoints.SummaryIDsMax): past it a repair cannot know the keys.
const repairKeysLimit = checkpoints.SummaryIDsMax

// Enabled reports whether a plan is configured.
func (c Config) Enabled() bool { return len(c.Stages) > 0 }

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Every == 0 {
		c.Every = 5 * time.Second
	}
	if c.SignalWindow == 0 {
		c.SignalWindow = time.Minute
	}
	if c.DrillTimeout == 0 {
		c.DrillTimeout = 2 * time.Minute
	}
	if c.Repair.MaxKeys == 0 {
		c.Repair.MaxKeys = repairKeysLimit
	}
	if c.Repair.KeysPerSecond == 0 {
		c.Repair.KeysPerSecond = 100
	}
	if c.Repair.MaxLagSeconds == 0 {
		c.Repair.MaxLagSeconds = 30
	}
	trig := func(ts []Trigger) []Trigger {
		out := append([]Trigger(nil), ts...)
		for i := range out {
			t := &out[i]
			if t.For == 0 {
				t.For = time.Minute
			}
			if t.Cooldown == 0 {
				t.Cooldown = 10 * time.Minute
			}
			if t.MaxAttempts == 0 {
				t.MaxAttempts = 3
			}
		}
		return out
	}
	c.Triggers = trig(c.Triggers)
	stages := append([]Stage(nil), c.Stages...)
	for i := range stages {
		s := &stages[i]
		if s.Slice.Share == 0 {
			s.Slice.Share = 10000
		}
		if s.Reads == "" {
			s.Reads = Shadow
		}
		if s.Advance == "" {
			s.Advance = "manual"
		}
		gates := append([]Gate(nil), s.Gates...)
		for j := range gates {
			if gates[j].Window == 0 {
				gates[j].Window = 10 * time.Minute
			}
		}
		s.Gates = gates
		s.Triggers = trig(s.Triggers)
	}
	c.Stages = stages
	return c
}

// Validate lists every problem with the plan at once. Call it on WithDefaults' result.
func (c Config) Validate() error {
	if !c.Enabled() {
		if len(c.Triggers) > 0 {
			return errors.New("rollout.triggers: a plan needs stages")
		}
		return nil
	}
	var ps problems
	c.validateSettings(&ps)
	for _, t := range c.Triggers {
		t.validate("triggers", &ps)
	}
	names := map[string]bool{}
	for i, s := range c.Stages {
		where := fmt.Sprintf("stages[%d]", i)
		if s.Name == "" {
			ps.add("%s: a stage needs a name", where)
		} else if names[s.Name] {
			ps.add("%s: stage name %q used twice", where, s.Name)
		}
		names[s.Name] = true
		s.validate(where, &ps)
		c.validateStageTriggers(where, s, &ps)
		if i > 0 {
			if err := c.Stages[i-1].Slice.Slice().within(s.Slice.Slice()); err != nil {
				ps.add("%s (%s): a stage must widen the previous one: %v", where, s.Name, err)
			}
		}
	}
	return errors.Join(ps...)
}

// problems collects what Validate finds, each prefixed with "rollout.".
type problems []error

func (ps *problems) add(format string, a ...any) {
	*ps = append(*ps, fmt.Errorf("rollout."+format, a...))
}

// validateSettings checks the plan-wide settings: version, periods, repair.
func (c Config) validateSettings(ps *problems) {
	if c.Version == "" {
		ps.add("version: required; it names the plan in audit entries and route files")
	}
	if c.Every < 100*time.Millisecond || c.SignalWindow <= 0 || c.DrillTimeout <= 0 {
		ps.add("every (at least 100ms), signal_window and drill_timeout must be positive")
	}
	if c.Repair.MaxKeys < 1 || c.Repair.MaxKeys > repairKeysLimit || c.Repair.KeysPerSecond <= 0 || c.Repair.MaxLagSeconds <= 0 {
		ps.add("repair: max_keys between 1 and %d (what a round summary lists), keys_per_second and max_lag_seconds above 0",
			repairKeysLimit)
	}
}

// validate checks a stage's slice, modes and gates; where names it.
func (s Stage) validate(where string, ps *problems) {
	if len(s.Slice.Collections) == 0 {
		ps.add("%s (%s): slice.collections: list at least one db.collection", where, s.Name)
	}
	for _, ns := range s.Slice.Collections {
		if db, coll, ok := strings.Cut(ns, "."); !ok || db == "" || coll == "" {
			ps.add("%s (%s): slice.collections: %q is not db.collection", where, s.Name, ns)
		}
	}
	if s.Slice.Share <= 0 || s.Slice.Share > 10000 {
		ps.add("%s (%s): slice.share must be above 0%% and at most 100%%", where, s.Name)
	}
	switch s.Reads {
	case Legacy, Shadow, New:
	default:
		ps.add("%s (%s): reads %q (legacy, shadow, new)", where, s.Name, s.Reads)
	}
	if s.Advance != "auto" && s.Advance != "manual" {
		ps.add("%s (%s): advance %q (auto, manual)", where, s.Name, s.Advance)
	}
	gnames := map[string]bool{}
	for _, g := range s.Gates {
		if g.Name == "" || gnames[g.Name] {
			ps.add("%s (%s): every gate needs a unique name", where, s.Name)
		}
		gnames[g.Name] = true
		g.validate(where, ps)
	}
}

func (g Gate) validate(where string, ps *problems) {
	if !knownSignals[g.Signal] {
		ps.add("%s gate %q: unknown signal %q (%s)", where, g.Name, g.Signal, signalList())
	}
	if g.Max == nil && g.Min == nil {
		ps.add("%s gate %q: give max and/or min", where, g.Name)
	}
	if g.Window <= 0 {
		ps.add("%s gate %q: window must be positive", where, g.Name)
	}
}

// validateStageTriggers checks a stage's triggers, whose names must differ
// from each other and from the plan-wide triggers'.
func (c Config) validateStageTriggers(where string, s Stage, ps *problems) {
	tnames := map[string]bool{}
	for _, t := range c.Triggers {
		tnames[t.Name] = true
	}
	for _, t := range s.Triggers {
		t.validate(where, ps)
		if tnames[t.Name] {
			ps.add("%s (%s): trigger name %q used twice (plan-wide triggers count)", where, s.Name, t.Name)
		}
		tnames[t.Name] = true
	}
}

func (t Trigger) validate(where string, ps *problems) {
	if t.Name == "" {
		ps.add("%s: a trigger needs a name (drills name it)", where)
	}
	if !knownSignals[t.Signal] {
		ps.add("%s trigger %q: unknown signal %q (%s)", where, t.Name, t.Signal, signalList())
	}
	if t.Above == nil && t.Below == nil {
		ps.add("%s trigger %q: give above and/or below", where, t.Name)
	}
	switch t.Action {
	case Halt, Rewind, Repair, SoftRollback, HardRollback:
	default:
		ps.add("%s trigger %q: action %q (halt, rewind, repair, soft-rollback, hard-rollback)", where, t.Name, t.Action)
	}
	if t.For < 0 || t.Cooldown < 0 || t.MaxAttempts < 1 {
		ps.add("%s trigger %q: for and cooldown must not be negative, max_attempts at least 1", where, t.Name)
	}
}

func signalList() string {
	return strings.Join([]string{SignalTypeCompat, SignalDivergentRows, SignalDivergenceRatio, SignalLagSeconds,
		SignalLagRecords, SignalWriteP99, SignalDeadLetterRate, SignalErrorRatio}, ", ")
}

// triggers is the stage's effective trigger list: the plan's, then its own.
func (c Config) triggers(stage int) []Trigger {
	if stage < 0 || stage >= len(c.Stages) {
		return c.Triggers
	}
	return append(append([]Trigger(nil), c.Triggers...), c.Stages[stage].Triggers...)
}
