package rollout_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/rollout"
)

// TestValidateListsEveryProblem gives Validate a plan wrong in every way it
// checks, at once, and wants every problem, in order, with its message.
func TestValidateListsEveryProblem(t *testing.T) {
	one := 1.0
	badTrigger := rollout.Trigger{Signal: "vibes", Action: "panic", For: -time.Second}
	c := rollout.Config{
		Every:    10 * time.Millisecond,
		Triggers: []rollout.Trigger{badTrigger},
		Stages: []rollout.Stage{
			{Reads: "both", Advance: "later",
				Gates:    []rollout.Gate{{Signal: "vibes"}, {Signal: rollout.SignalLagSeconds, Max: &one, Window: time.Minute}},
				Triggers: []rollout.Trigger{badTrigger}},
			{Name: "a", Slice: rollout.SliceSpec{Collections: []string{"users", ".c", "d."}, Share: 20000}, Reads: rollout.New, Advance: "auto",
				Triggers: []rollout.Trigger{{Name: "t", Signal: rollout.SignalLagSeconds, Below: &one, Action: rollout.Halt, MaxAttempts: 1}}},
			{Name: "a", Slice: rollout.SliceSpec{Collections: []string{"d.c"}, Share: 10}, Reads: rollout.Legacy, Advance: "manual"},
		},
	}
	const signals = "(type_compat, divergent_rows, divergence_ratio, lag_seconds, lag_records, write_p99_seconds, dead_letter_rate, error_ratio)"
	want := []string{
		`rollout.version: required; it names the plan in audit entries and route files`,
		`rollout.every (at least 100ms), signal_window and drill_timeout must be positive`,
		`rollout.repair: max_keys between 1 and 1000 (what a round summary lists), keys_per_second and max_lag_seconds above 0`,
		`rollout.triggers: a trigger needs a name (drills name it)`,
		`rollout.triggers trigger "": unknown signal "vibes" ` + signals,
		`rollout.triggers trigger "": give above and/or below`,
		`rollout.triggers trigger "": action "panic" (halt, rewind, repair, soft-rollback, hard-rollback)`,
		`rollout.triggers trigger "": for and cooldown must not be negative, max_attempts at least 1`,
		`rollout.stages[0]: a stage needs a name`,
		`rollout.stages[0] (): slice.collections: list at least one db.collection`,
		`rollout.stages[0] (): slice.share must be above 0% and at most 100%`,
		`rollout.stages[0] (): reads "both" (legacy, shadow, new)`,
		`rollout.stages[0] (): advance "later" (auto, manual)`,
		`rollout.stages[0] (): every gate needs a unique name`,
		`rollout.stages[0] gate "": unknown signal "vibes" ` + signals,
		`rollout.stages[0] gate "": give max and/or min`,
		`rollout.stages[0] gate "": window must be positive`,
		`rollout.stages[0] (): every gate needs a unique name`,
		`rollout.stages[0]: a trigger needs a name (drills name it)`,
		`rollout.stages[0] trigger "": unknown signal "vibes" ` + signals,
		`rollout.stages[0] trigger "": give above and/or below`,
		`rollout.stages[0] trigger "": action "panic" (halt, rewind, repair, soft-rollback, hard-rollback)`,
		`rollout.stages[0] trigger "": for and cooldown must not be negative, max_attempts at least 1`,
		`rollout.stages[0] (): trigger name "" used twice (plan-wide triggers count)`,
		`rollout.stages[1] (a): slice.collections: "users" is not db.collection`,
		`rollout.stages[1] (a): slice.collections: ".c" is not db.collection`,
		`rollout.stages[1] (a): slice.collections: "d." is not db.collection`,
		`rollout.stages[1] (a): slice.share must be above 0% and at most 100%`,
		`rollout.stages[2]: stage name "a" used twice`,
		`rollout.stages[2] (a): a stage must widen the previous one: .c goes from 200% to 0%`,
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("a plan wrong in every way is valid")
	}
	got := strings.Split(err.Error(), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %d problems:\n%s\nwant %d:\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
	}
}

func TestValidateTriggersNeedStages(t *testing.T) {
	err := rollout.Config{Triggers: []rollout.Trigger{{Name: "t"}}}.Validate()
	if err == nil || err.Error() != "rollout.triggers: a plan needs stages" {
		t.Fatalf("got %v", err)
	}
}
