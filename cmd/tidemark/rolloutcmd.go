package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/rollout"
)

const planUsage = `tidemark plan <subcommand> [flags]

Show or steer the rollout plan of a running daemon (the rollout: section of
its config) through the admin API.

Subcommands:
  status                       stage, slice, each gate (pass/fail/pending with value,
                               threshold and how long it held) and each trigger
                               (attempts, cool-down)
  advance --reason TEXT        move to the next stage; refused unless every gate
          [--force]            passes (--force overrides, and is audited as forced)
  abort --reason TEXT          stop automation and route every read to legacy;
                               the sink keeps writing the slice
  rollback --reason TEXT       route the slice's reads back to legacy (soft);
           [--hard]            --hard also narrows to the previous stage and marks
                               this one reverted
  resume --reason TEXT         a person's all-clear: lift a hold, abort or soft
                               rollback, release partitions the rollout paused,
                               give triggers their attempts back
  drill --trigger NAME         rehearse a trigger of the current stage end to end:
        --reason TEXT          fire it, verify its effect, restore, audit the report

Every change needs --reason and a token (--token-file or TIDEMARK_TOKEN); it is
written to the audit log under your token's name.

Examples:
  tidemark plan status
  tidemark plan advance --reason "canary clean for 24h, CHG-1234"
  tidemark plan drill --trigger lag-halt --reason "monthly rollback drill"
  tidemark plan rollback --reason "p99 regression on the read path"`

func planCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stdout, planUsage)
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	usage := map[string]string{
		"status":   "plan status [--json]",
		"advance":  "plan advance --reason TEXT [--force]",
		"abort":    "plan abort --reason TEXT",
		"rollback": "plan rollback --reason TEXT [--hard]",
		"resume":   "plan resume --reason TEXT",
		"drill":    "plan drill --trigger NAME --reason TEXT",
	}[sub]
	if usage == "" {
		return &exitError{code: 2, err: fmt.Errorf("unknown subcommand %q\n\n%s", sub, planUsage)}
	}
	cf := newClientFlags("plan "+sub, usage, stderr)
	var reason, trigger *string
	var force, hard *bool
	if sub != "status" {
		reason = cf.fs.String("reason", "", "why, for the audit log (required)")
	}
	switch sub {
	case "advance":
		force = cf.fs.Bool("force", false, "advance even though a gate does not pass (audited as forced)")
	case "rollback":
		hard = cf.fs.Bool("hard", false, "also narrow the slice to the previous stage and mark this stage reverted")
	case "drill":
		trigger = cf.fs.String("trigger", "", "trigger of the current stage to rehearse (required)")
	}
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	if sub == "status" {
		var st rollout.Status
		if err := cl.Do(ctx, "GET", "/v1/plan", nil, &st); err != nil {
			return err
		}
		if *cf.json {
			return printJSON(stdout, st)
		}
		printPlan(stdout, st)
		return nil
	}
	if strings.TrimSpace(*reason) == "" {
		return &exitError{code: 2, err: errors.New("--reason is required")}
	}
	req := daemon.PlanRequest{Reason: *reason}
	if force != nil {
		req.Force = *force
	}
	if hard != nil {
		req.Hard = *hard
	}
	if sub == "drill" {
		if *trigger == "" {
			return &exitError{code: 2, err: errors.New("--trigger is required; `tidemark plan status` lists the current stage's triggers")}
		}
		req.Trigger = *trigger
		// A drill waits for effects such as a replay; give it time.
		cl.HTTP.Timeout = 15 * time.Minute
		var rep rollout.DrillReport
		if err := cl.Do(ctx, "POST", "/v1/plan/drill", req, &rep); err != nil {
			return err
		}
		if *cf.json {
			return printJSON(stdout, rep)
		}
		printDrill(stdout, rep)
		if rep.Result != rollout.Pass {
			return &exitError{code: 1, err: fmt.Errorf("drill %s failed; the report is in the audit log (tidemark audit --action drill)", rep.ID)}
		}
		return nil
	}
	var st rollout.Status
	if err := cl.Do(ctx, "POST", "/v1/plan/"+sub, req, &st); err != nil {
		return err
	}
	if *cf.json {
		return printJSON(stdout, st)
	}
	printPlan(stdout, st)
	return nil
}

func printPlan(w io.Writer, st rollout.Status) {
	mode := ""
	if st.DryRun {
		mode = " (dry run: automatic actions are only audited)"
	}
	fmt.Fprintf(w, "plan %s%s\nstage %d/%d %s since %s (advance: %s, reads in slice: %s)\n", st.PlanVersion, mode,
		st.Stage+1, len(st.Stages), st.StageName, st.StageSince.Format(time.RFC3339), st.Advance, st.Reads)
	var ns []string
	for k, v := range st.Slice {
		ns = append(ns, fmt.Sprintf("%s %v", k, v))
	}
	sort.Strings(ns)
	fmt.Fprintf(w, "slice: %s\n", strings.Join(ns, ", "))
	for _, flag := range []struct {
		on  bool
		msg string
	}{{st.Aborted, "ABORTED: every read routes to legacy; `tidemark plan resume` to continue"},
		{st.SoftRollback, "SOFT ROLLBACK: the slice's reads route to legacy"},
		{st.Held != "", "HELD: " + st.Held},
		{len(st.Reverted) > 0, "reverted stages: " + strings.Join(st.Reverted, ", ")},
		{len(st.Paused) > 0, fmt.Sprintf("paused by the rollout: %v", st.Paused)},
		{st.Complete, "the last stage's gates pass: the plan is complete"},
		{st.LastError != "", "last evaluation error: " + st.LastError}} {
		if flag.on {
			fmt.Fprintln(w, flag.msg)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nGATE\tSIGNAL\tSTATE\tVALUE\tTHRESHOLD\tHELD\tWINDOW")
	for _, g := range st.Gates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s (%s)\t%s\n", g.Name, g.Signal, g.State, value(g.Value), g.Threshold,
			secs(g.HeldFor), g.Observed, secs(g.Window))
	}
	fmt.Fprintln(tw, "\nTRIGGER\tSIGNAL\tACTION\tVALUE\tCONDITION\tHELD\tFOR\tATTEMPTS\tCOOL-DOWN LEFT")
	for _, t := range st.Triggers {
		att := fmt.Sprintf("%d/%d", t.Attempts, t.MaxAttempts)
		if t.Exhausted {
			att += " exhausted"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Signal, t.Action, value(t.Value), t.Condition,
			secs(t.HeldFor), secs(t.For), att, secs(t.CooldownLeft))
	}
	tw.Flush()
	// Where each trigger's last firing stands: the evidence it acted on,
	// whether it waits (pending) and for what, and what judged it.
	for _, t := range st.Triggers {
		switch {
		case t.Pending:
			fmt.Fprintf(w, "%s: PENDING, fired on %s; %s\n", t.Name, t.FiredOn, t.Effect)
		case t.FiredOn != "":
			fmt.Fprintf(w, "%s: fired on %s; judged by %s\n", t.Name, t.FiredOn, t.Judged)
		}
	}
	if wd := st.Widening; wd != nil {
		if wd.Phase == rollout.PhaseApplied {
			fmt.Fprintf(w, "widened slice back-filled at %s; rounds that started before say nothing about this stage\n",
				wd.AppliedAt.Format(time.RFC3339))
		} else {
			fmt.Fprintf(w, "widened slice back-filling (%s: %s); the clean gate waits for it\n", wd.Phase, wd.Waiting)
		}
	}
}

func printDrill(w io.Writer, rep rollout.DrillReport) {
	fmt.Fprintf(w, "drill %s of trigger %s (%s) at stage %s: %s\n", rep.ID, rep.Trigger, rep.Action, rep.Stage, strings.ToUpper(rep.Result))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tOK\tSECONDS\tDETAIL")
	for _, s := range rep.Steps {
		fmt.Fprintf(tw, "%s\t%v\t%.1f\t%s\n", s.Step, s.OK, s.Seconds, s.Detail)
	}
	tw.Flush()
}

func value(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.4g", *v)
}

func secs(s float64) string { return (time.Duration(s) * time.Second).String() }
