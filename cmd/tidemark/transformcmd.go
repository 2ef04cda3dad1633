package main

import (
	"context"
	"encoding/json"
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
	asJSON := fs.Bool("json", false, "print JSON for machines")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tidemark transform --spec FILE --doc FILE.json [--namespace db.coll] [--json]")
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
	if *asJSON {
		return printJSON(stdout, transformOutput(m, *ns, rows))
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

// transformJSON is `tidemark transform --json`: the rows a document becomes,
// each column with its CQL type and value (a CQL value without a JSON form,
// such as a UUID, an inet or a duration, as its CQL text).
type transformJSON struct {
	Spec      string         `json:"spec_version"`
	Checksum  string         `json:"spec_checksum"`
	Namespace string         `json:"namespace"`
	Rows      []transformRow `json:"rows"`
}

type transformRow struct {
	Table   string            `json:"table"`
	Columns []transformColumn `json:"columns"`
}

type transformColumn struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

func transformOutput(m *transform.Mapping, ns string, rows []transform.Row) transformJSON {
	out := transformJSON{Spec: m.Version(), Checksum: m.Checksum(), Namespace: ns, Rows: []transformRow{}}
	for _, r := range rows {
		tr := transformRow{Table: r.Table.QualifiedName()}
		for i, c := range r.Table.Columns {
			var v any // null
			switch x := r.Values[i]; {
			case isNull(x):
			case isJSON(x):
				v = x // a time as RFC 3339, say, rather than Go's String
			default:
				v = show(x)
			}
			tr.Columns = append(tr.Columns, transformColumn{Name: c.Name, Type: fmt.Sprint(c.Type), Value: v})
		}
		out.Rows = append(out.Rows, tr)
	}
	return out
}

func isJSON(v any) bool {
	_, ok := v.(json.Marshaler)
	return ok
}

// isNull says whether a transformed value is CQL null: nil, or a typed nil
// pointer (a null tuple, see transform.Placeholder).
func isNull(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

func show(v any) any {
	if isNull(v) {
		return "null"
	}
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return v
}
