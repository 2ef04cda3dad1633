package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/tidemarkhq/tidemark/trace"
)

func traceCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newClientFlags("trace", "trace [--json] NAMESPACE ID\n\nID is the _id as extended JSON: '{\"$oid\":\"…\"}', '\"abc\"', 42; a bare word is a string.", stderr)
	// Flags may come before, between or after the two positional arguments.
	var pos []string
	for {
		if err := cf.fs.Parse(args); err != nil {
			return err
		}
		if cf.fs.NArg() == 0 {
			break
		}
		pos = append(pos, cf.fs.Arg(0))
		args = cf.fs.Args()[1:]
	}
	if len(pos) > 2 {
		return &exitError{code: 2, err: fmt.Errorf("unexpected argument %q (trace takes NAMESPACE and ID; quote an _id with spaces)", pos[2])}
	}
	if len(pos) != 2 {
		return &exitError{code: 2, err: errors.New("want NAMESPACE and ID, e.g. tidemark trace app.users '{\"$oid\":\"65a…\"}'")}
	}
	ns, id := pos[0], pos[1]
	if _, err := trace.ParseID(id); err != nil {
		return &exitError{code: 2, err: err}
	}
	cl, err := cf.client()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var j trace.Journey
	if err := cl.Do(ctx, "GET", "/v1/trace?namespace="+url.QueryEscape(ns)+"&id="+url.QueryEscape(id), nil, &j); err != nil {
		return err
	}
	if *cf.json {
		return printJSON(stdout, j)
	}
	printJourney(stdout, &j)
	return nil
}

func printJourney(w io.Writer, j *trace.Journey) {
	fmt.Fprintf(w, "%s %s: %s\n  %s\n\n", j.Namespace, j.ID, strings.ToUpper(j.State), j.Summary)
	if j.Source.Found {
		fmt.Fprintf(w, "source (read at %s): %s\n", j.Source.ReadAt, j.Source.Document)
	} else {
		fmt.Fprintf(w, "source (read at %s): no document\n", j.Source.ReadAt)
	}
	k := j.Kafka
	fmt.Fprintf(w, "\nkafka %s[%d]: offsets %d..%d, sink committed %d, %d records scanned (complete: %v)\n",
		k.Topic, k.Partition, k.Start, k.End, k.Committed, k.Scanned, k.Complete)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  OFFSET\tOP\tVERSION\tWRITTEN\tAPPLIED")
	for _, r := range k.Records {
		op := r.Op
		if r.Error != "" {
			op = "malformed: " + r.Error
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%v\n", r.Offset, op, r.Version, r.Timestamp.Format("2006-01-02 15:04:05.000"), r.Applied)
	}
	tw.Flush()
	for _, h := range j.Tables {
		state := "matches the source"
		if !h.Match {
			state = "DIFFERS"
			if len(h.Columns) > 0 {
				state += " in " + strings.Join(h.Columns, ", ")
			}
		}
		fmt.Fprintf(w, "\n%s: %s\n", h.Table, state)
		if h.Expected != nil {
			fmt.Fprintf(w, "  expected: %v\n", h.Expected)
		} else {
			fmt.Fprintln(w, "  expected: no row")
		}
		if h.Row != nil {
			fmt.Fprintf(w, "  row:      %v (newest write %s)\n", h.Row.Values, h.Row.Version)
		} else {
			fmt.Fprintln(w, "  row:      none")
		}
		if h.KeyMap != nil {
			fmt.Fprintf(w, "  key map:  %v at %s\n", h.KeyMap.PrimaryKey, h.KeyMap.Version)
		}
		if h.Stray != nil {
			fmt.Fprintf(w, "  old row still under the key map's key: %v\n", h.Stray.Values)
		}
	}
	if len(j.Verdicts) > 0 {
		fmt.Fprintln(w, "\nreconcile rounds, newest first:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  REPORT\tSTARTED\tROUND\tTHIS DOCUMENT\tTABLE")
		for _, v := range j.Verdicts {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", v.Report, v.Start.Format("15:04:05"), v.Status, v.Class, v.Table)
		}
		tw.Flush()
	}
	for _, p := range j.Problems {
		fmt.Fprintf(w, "\nproblem: %s\n", p)
	}
}
