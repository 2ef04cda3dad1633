package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"text/tabwriter"

	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
)

func transformCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("transform", flag.ContinueOnError)
	fs.SetOutput(stderr)
	spec := fs.String("spec", "", "mapping spec (YAML)")
	docPath := fs.String("doc", "", "document in MongoDB extended JSON ('-' for stdin)")
	ns := fs.String("namespace", "", "db.collection (default: the spec's only namespace)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tidemark transform --spec FILE --doc FILE.json [--namespace db.coll]")
		fs.PrintDefaults()
	}
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *spec == "" || *docPath == "" {
		return &exitError{code: 2, err: errors.New("--spec and --doc are required")}
	}
	m, err := transform.Load(*spec)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var b []byte
	if *docPath == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(*docPath)
	}
	if err != nil {
		return err
	}
	var doc bson.Raw
	if err := bson.UnmarshalExtJSON(b, false, &doc); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("document: %w", err)}
	}
	if *ns == "" {
		if n := m.Namespaces(); len(n) == 1 {
			*ns = n[0]
		} else {
			return &exitError{code: 2, err: fmt.Errorf("the spec maps %v: choose one with --namespace", n)}
		}
	}
	rows, err := m.Apply(*ns, doc)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	fmt.Fprintf(stdout, "spec %s (checksum %s)\n", m.Version(), m.Checksum()[:12])
	for _, r := range rows {
		fmt.Fprintf(stdout, "\n%s\n", r.Table.QualifiedName())
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for i, c := range r.Table.Columns {
			fmt.Fprintf(tw, "  %s\t%s\t%v\n", c.Name, c.Type, show(r.Values[i]))
		}
		tw.Flush()
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "\n(no table's filter admits this document)")
	}
	return nil
}

func show(v any) any {
	if v == nil {
		return "null"
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return "null" // a null tuple is a typed nil pointer (see transform.Placeholder)
	}
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return v
}
