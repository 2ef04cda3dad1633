package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tidemarkhq/tidemark/config"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/tidemarkhq/tidemark/validate"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.yaml.in/yaml/v3"
)

const validateHelp = `usage: tidemark validate --spec FILE [--config FILE] [--sample N] [--max-failure-rate R] [--json]

The first verification gate for a mapping spec. It only reads; nothing is written.

  1. The spec parses and compiles.
  2. Against the live Cassandra schema (system_schema): every target keyspace,
     table, column and user-defined type exists; each column's type matches the
     spec's (as system_schema spells it; varchar = text; frozen<udt> may feed a
     non-frozen udt column); the partition and clustering keys are the table's,
     in order; no primary key column of a table is left out of the spec; and,
     for frozen UDT columns, every field the spec writes exists in the type.
  3. Against a sample of live documents of every source collection (uniform via
     $sample; a collection no larger than the sample is read whole; a server
     without $sample gets runs at random offsets in _id order): how many convert
     cleanly, and the failures per table, column and rule with example _ids.

Connections come from --config (the daemon's file: cassandra and mongo sections,
TLS and credentials as documented there) or, without it, from
TIDEMARK_CASSANDRA_HOSTS and TIDEMARK_MONGO_URI (default 127.0.0.1:9042 and
mongodb://127.0.0.1:27017). The spec defaults to the config's spec.

Exit status: 0 the gate passes; 1 it fails (each problem is listed);
2 usage, config or connection error (nothing was validated).

Flags:`

func validateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specPath := fs.String("spec", "", "mapping spec (YAML); default: the config's spec")
	cfgPath := fs.String("config", "", "daemon config (YAML) for connections, TLS and credentials; optional")
	sample := fs.Int("sample", 1000, "documents to sample per namespace (1..1000000)")
	maxRate := fs.Float64("max-failure-rate", 0, "share of sampled documents allowed to fail conversion, 0..1 (0: any failure fails the gate)")
	asJSON := fs.Bool("json", false, "print the report as JSON for machines")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(stderr, validateHelp)
		fs.PrintDefaults()
	}
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	usage := func(format string, a ...any) error {
		return &exitError{code: 2, err: fmt.Errorf(format+"\n(tidemark validate --help for usage)", a...)}
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := validateConfig(*cfgPath)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if *specPath == "" {
		*specPath = cfg.Spec
	}
	if *specPath == "" {
		return usage("--spec is required (or a config whose spec names one)")
	}
	if *sample < 1 || *sample > 1_000_000 || *maxRate < 0 || *maxRate > 1 {
		return usage("--sample must be within 1..1000000 and --max-failure-rate within 0..1")
	}
	opts := []validate.Option{validate.SampleSize(*sample), validate.MaxFailureRate(*maxRate)}

	data, err := os.ReadFile(*specPath)
	if err != nil {
		return usage("%v", err)
	}
	m, err := transform.Parse(data)
	if err != nil {
		// A spec that does not parse is the gate's first failure, not a usage error.
		return printValidateReport(stdout, validate.SpecError(err), *asJSON)
	}
	// The Spec as well as the Mapping: the UDT field check needs the spec's fields.
	var spec transform.Spec
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&spec); err == nil {
		opts = append(opts, validate.WithSpec(&spec))
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cl, err := cfg.CassandraCluster()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	cass, err := cl.CreateSession()
	if err != nil {
		return &exitError{code: 2, err: fmt.Errorf("cannot reach Cassandra at %v: %w\ncheck cassandra.hosts in --config or TIDEMARK_CASSANDRA_HOSTS, and that Cassandra is up (local stack: deploy/local/stack status)",
			cfg.Cassandra.Hosts, err)}
	}
	defer cass.Close()
	mo, err := cfg.MongoOptions()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if mo.ServerSelectionTimeout == nil {
		mo.SetServerSelectionTimeout(15 * time.Second)
	}
	mc, err := mongo.Connect(ctx, mo)
	if err == nil {
		err = mc.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
	}
	if err != nil {
		return &exitError{code: 2, err: fmt.Errorf("cannot reach MongoDB: %w\ncheck mongo.uri / mongo.uri_file in --config or TIDEMARK_MONGO_URI, and that the server is up (local stack: deploy/local/stack status)", err)}
	}
	defer mc.Disconnect(context.WithoutCancel(ctx))

	r, err := validate.Check(ctx, m, cass, mc, opts...)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (raise --timeout or lower --sample)", err)
		}
		return &exitError{code: 2, err: err}
	}
	return printValidateReport(stdout, r, *asJSON)
}

// printValidateReport prints r and turns a failed gate into exit status 1.
func printValidateReport(w io.Writer, r *validate.Report, asJSON bool) error {
	var err error
	if asJSON {
		err = printJSON(w, r)
	} else {
		err = r.WriteText(w)
	}
	if err != nil {
		return err
	}
	if !r.Pass {
		return &exitError{code: 1, err: errors.New("the gate failed (see the report above)")}
	}
	return nil
}

// validateConfig is the daemon config when one is named; otherwise the
// defaults with the environment overrides, which is all validate needs.
func validateConfig(path string) (*config.Config, error) {
	if path != "" {
		return config.Load(path)
	}
	return config.FromEnv(envLookup), nil
}
