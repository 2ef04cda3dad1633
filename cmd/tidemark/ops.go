package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/sink"
	"go.mongodb.org/mongo-driver/bson"
)

// clientFlags are the flags every API command takes.
type clientFlags struct {
	fs        *flag.FlagSet
	addr      *string
	tokenFile *string
	caFile    *string
	json      *bool
}

func newClientFlags(name, usage string, stderr io.Writer) clientFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := clientFlags{fs: fs,
		addr:      fs.String("addr", envOr("TIDEMARK_ADDR", "127.0.0.1:7070"), "daemon admin address (env TIDEMARK_ADDR)"),
		tokenFile: fs.String("token-file", "", "file holding the bearer token (env TIDEMARK_TOKEN_FILE, or TIDEMARK_TOKEN)"),
		caFile:    fs.String("ca-file", envOr("TIDEMARK_CA_FILE", ""), "PEM CA (or certificate) to verify an https --addr with (env TIDEMARK_CA_FILE)"),
		json:      fs.Bool("json", false, "print JSON for machines"),
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tidemark %s\n\n", usage)
		fs.PrintDefaults()
	}
	return c
}

func (c clientFlags) client() (*admin.Client, error) {
	cl, err := admin.NewClient(*c.addr, *c.tokenFile)
	if err != nil || *c.caFile == "" {
		return cl, err
	}
	return cl, cl.TrustCA(*c.caFile)
}

func envOr(k, d string) string {
	if v := envLookup(k); v != "" {
		return v
	}
	return d
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("status", "status [--json]", stderr)
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	var st daemon.Status
	if err := cl.Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
		return err
	}
	if *cf.json {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "roles: %s   spec: %s\n", strings.Join(st.Roles, ","), st.SpecVersion)
	fmt.Fprintf(stdout, "leader: %s\n\n", leaderText(st.Leader))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPART\tCOMMITTED\tEND\tBEHIND\tLAG(s)\tAPPLIED VERSION\tPAUSED")
	for _, p := range st.Partitions {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%s\t%v\n", p.Topic, p.Partition, p.Committed, p.End, p.RecordsBehind, p.SecondsBehind, p.Applied, p.Paused)
	}
	tw.Flush()
	if len(st.Partitions) == 0 {
		fmt.Fprintln(stdout, "(no partitions assigned to this daemon's sink)")
	}
	for ns, p := range st.Backfill {
		state := "running"
		if p.Done {
			state = "done"
		}
		if p.Error != "" {
			state = "failed: " + p.Error
		}
		fmt.Fprintf(stdout, "\nbackfill %s: %s, %d docs in %d chunks (estimated %d)\n", ns, state, p.Docs, p.Chunks, p.Estimated)
	}
	for ns, s := range st.Streams {
		if s.Stopped != "" {
			fmt.Fprintf(stdout, "\ncapture %s: STOPPED: %s\n", ns, s.Stopped)
		}
	}
	if len(st.Paused) > 0 {
		fmt.Fprintf(stdout, "\npaused: %s\n", partitionsText(st.Paused))
	}
	return nil
}

// partitionsText is tps for a person: "nothing", or each topic with its
// partitions in order ("tidemark.app.users 0,1,5; tidemark.app.orders 2").
func partitionsText(tps []sink.TopicPartition) string {
	if len(tps) == 0 {
		return "nothing"
	}
	byTopic := map[string][]int32{}
	for _, tp := range tps {
		byTopic[tp.Topic] = append(byTopic[tp.Topic], tp.Partition)
	}
	topics := slices.Sorted(maps.Keys(byTopic))
	parts := make([]string, len(topics))
	for i, t := range topics {
		ps := byTopic[t]
		slices.Sort(ps)
		nums := make([]string, len(ps))
		for j, p := range ps {
			nums[j] = strconv.Itoa(int(p))
		}
		parts[i] = t + " " + strings.Join(nums, ",")
	}
	return strings.Join(parts, "; ")
}

func parseParts(s string) ([]int32, error) {
	if s == "" {
		return nil, nil
	}
	var out []int32
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--partitions: %q is not a partition number", f)
		}
		out = append(out, int32(n))
	}
	return out, nil
}

func pauseCmd(pause bool) func(context.Context, []string, io.Writer, io.Writer) error {
	name := map[bool]string{true: "pause", false: "resume"}[pause]
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		cf := newClientFlags(name, name+" --topic T [--partitions 0,3] --reason TEXT", stderr)
		topic := cf.fs.String("topic", "", "topic, e.g. tidemark.app.users (required)")
		parts := cf.fs.String("partitions", "", "comma-separated partitions (default: all)")
		reason := cf.fs.String("reason", "", "why, for the audit log (required)")
		if err := parseArgs(cf.fs, args); err != nil {
			return err
		}
		ps, err := parseParts(*parts)
		if err != nil {
			return err
		}
		if *topic == "" || *reason == "" {
			return &exitError{code: 2, err: errors.New("--topic and --reason are required")}
		}
		cl, err := cf.client()
		if err != nil {
			return err
		}
		var out struct {
			Paused []sink.TopicPartition `json:"paused"`
		}
		if err := cl.Do(ctx, "POST", "/v1/"+name, daemon.PauseRequest{Topic: *topic, Partitions: ps, Reason: *reason}, &out); err != nil {
			return err
		}
		if *cf.json {
			return printJSON(stdout, out)
		}
		fmt.Fprintf(stdout, "%sd. Paused now: %s\n", name, partitionsText(out.Paused))
		return nil
	}
}

func rewindCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("rewind", "rewind --topic T [--partitions 0,3] (--to-time RFC3339 | --to-offset N | --by N | --to-mark NAME|latest) --reason TEXT [--execute]", stderr)
	topic := cf.fs.String("topic", "", "topic (required)")
	parts := cf.fs.String("partitions", "", "comma-separated partitions (default: all)")
	toTime := cf.fs.String("to-time", "", "replay records produced at or after this time (RFC3339)")
	toOffset := cf.fs.Int64("to-offset", -1, "replay from this absolute offset")
	by := cf.fs.Int64("by", 0, "replay the last N records of each partition")
	toMark := cf.fs.String("to-mark", "", "replay from a verified mark: a clean reconcile report id, or latest")
	reason := cf.fs.String("reason", "", "why, for the audit log (required)")
	execute := cf.fs.Bool("execute", false, "execute the plan (default: print it only)")
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	ps, err := parseParts(*parts)
	if err != nil {
		return err
	}
	req := daemon.RewindRequest{Topic: *topic, Partitions: ps, Reason: *reason, Execute: *execute, ToMark: *toMark}
	if *toTime != "" {
		t, err := time.Parse(time.RFC3339, *toTime)
		if err != nil {
			return &exitError{code: 2, err: fmt.Errorf("--to-time: %w", err)}
		}
		req.ToTime = &t
	}
	if *toOffset >= 0 {
		req.ToOffset = toOffset
	}
	if *by > 0 {
		req.By = by
	}
	if *topic == "" || *reason == "" {
		return &exitError{code: 2, err: errors.New("--topic and --reason are required")}
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	var plan daemon.RewindPlan
	if err := cl.Do(ctx, "POST", "/v1/rewind", req, &plan); err != nil {
		return err
	}
	if *cf.json {
		return printJSON(stdout, plan)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rewind %s of %s (gc_grace_seconds %d)\nPART\tCURRENT\tTARGET\tREPLAY\tFROM VERSION\tWRITTEN\tMARK\n", plan.ID, plan.Topic, plan.GCGrace)
	for _, p := range plan.Partitions {
		written := "-"
		if p.FirstTime != nil {
			written = p.FirstTime.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%s\t%s\n", p.Partition, p.Current, p.Target, p.Replay, orDash(p.FirstVersion), written, orDash(p.Mark))
	}
	tw.Flush()
	if plan.Executed {
		fmt.Fprintf(stdout, "executed: %d records will be replayed\n", plan.Replay)
	} else {
		fmt.Fprintf(stdout, "dry run: %d records would be replayed; add --execute to do it\n", plan.Replay)
	}
	return nil
}

func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return auditVerifyCmd(ctx, args[1:], stdout, stderr)
	}
	cf := newClientFlags("audit", "audit [--since RFC3339] [--actor NAME] [--action ACTION] [--limit N] [--json] [--follow]", stderr)
	since := cf.fs.String("since", "", "only entries at or after this time (RFC3339)")
	actor := cf.fs.String("actor", "", "only this actor (token name, or auto:<component>)")
	action := cf.fs.String("action", "", `only this action, e.g. "POST /v1/pause"`)
	limit := cf.fs.Int("limit", 50, "newest N entries")
	follow := cf.fs.Bool("follow", false, "keep printing new entries as they are written, until interrupted")
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"since": *since, "actor": *actor, "action": *action, "limit": strconv.Itoa(*limit)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	var es []checkpoints.AuditEntry
	if err := cl.Do(ctx, "GET", "/v1/audit?"+q.Encode(), nil, &es); err != nil {
		return err
	}
	print := func(es []checkpoints.AuditEntry, header bool) error {
		if *cf.json {
			if *follow {
				// One object per line, so a follower can be piped to jq.
				for _, e := range es {
					b, _ := json.Marshal(e)
					fmt.Fprintf(stdout, "%s\n", b)
				}
				return nil
			}
			return printJSON(stdout, es)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		if header {
			fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tRESULT\tREASON")
		}
		for _, e := range es {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Result, e.Reason)
		}
		return tw.Flush()
	}
	if err := print(es, true); err != nil || !*follow {
		return err
	}
	// Entries can share a timestamp, so the ones already printed at the
	// newest time are remembered and skipped when asked again from it.
	last, seen := time.Time{}, map[string]bool{}
	mark := func(es []checkpoints.AuditEntry) {
		for _, e := range es {
			if e.Time.After(last) {
				last, seen = e.Time, map[string]bool{}
			}
			if e.Time.Equal(last) {
				b, _ := json.Marshal(e)
				seen[string(b)] = true
			}
		}
	}
	mark(es)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
		if !last.IsZero() {
			q.Set("since", last.Format(time.RFC3339Nano))
		}
		q.Del("limit")
		var more, fresh []checkpoints.AuditEntry
		if err := cl.Do(ctx, "GET", "/v1/audit?"+q.Encode(), nil, &more); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(stderr, "audit: %v (retrying)\n", err)
			continue
		}
		for _, e := range more {
			b, _ := json.Marshal(e)
			if !seen[string(b)] {
				fresh = append(fresh, e)
			}
		}
		mark(fresh)
		if err := print(fresh, false); err != nil {
			return err
		}
	}
}

func backfillCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("backfill", "backfill --namespace db.coll [--ids ID,...] [--filter EXTJSON] [--reset-stream | --resume-after-invalidate] --reason TEXT", stderr)
	ns := cf.fs.String("namespace", "", "db.collection (required)")
	ids := cf.fs.String("ids", "", "comma-separated _ids in extended JSON values, e.g. '{\"$oid\":\"...\"}',42,\"k\"")
	filter := cf.fs.String("filter", "", "MongoDB query in extended JSON")
	reset := cf.fs.Bool("reset-stream", false, "history-lost recovery: restart the stream from now with a full backfill")
	afterInv := cf.fs.Bool("resume-after-invalidate", false, "after a drop or rename stopped capture: continue after it (docs/mongodb.md)")
	reason := cf.fs.String("reason", "", "why, for the audit log (required)")
	if err := parseArgs(cf.fs, args); err != nil {
		return err
	}
	if *ns == "" || *reason == "" {
		return &exitError{code: 2, err: errors.New("--namespace and --reason are required")}
	}
	req := map[string]any{"namespace": *ns, "filter": *filter, "reset_stream": *reset, "reason": *reason,
		"resume_after_invalidate": *afterInv}
	if *ids != "" {
		var keys [][]byte
		for _, s := range config.SplitList(*ids) {
			var d bson.D
			if err := bson.UnmarshalExtJSON([]byte(`{"v":`+s+`}`), false, &d); err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--ids: %s: %w", s, err)}
			}
			raw, _ := bson.Marshal(d)
			keys = append(keys, envelope.Key(bson.Raw(raw).Lookup("v")))
		}
		req["keys"] = keys
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	var out map[string]string
	if err := cl.Do(ctx, "POST", "/v1/backfill", req, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backfill %s: %s\n", out["request"], out["status"])
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// leaderText is the leader line of `tidemark status`.
func leaderText(i daemon.LeaderInfo) string {
	switch {
	case !i.Election:
		return "no election (election.enabled is off)"
	case i.Leading:
		return "this daemon"
	case i.Leader == nil:
		return "none yet"
	}
	return fmt.Sprintf("%s (admin %s, since %s, epoch %d)", i.Leader.Identity, i.Leader.Admin, i.Leader.Since.Format(time.RFC3339), i.Leader.Epoch)
}
