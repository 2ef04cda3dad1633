package config

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/leader"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.yaml.in/yaml/v3"
)

// Config is the daemon's one YAML file. Every field can be overridden from
// the environment as TIDEMARK_<SECTION>_<FIELD> for the fields listed in envOverrides.
type Config struct {
	// Roles this daemon runs: capture, sink. Default both.
	Roles []string `yaml:"roles"`
	// Spec is the path of the mapping spec (transform).
	Spec      string          `yaml:"spec"`
	Kafka     KafkaConfig     `yaml:"kafka"`
	Mongo     MongoConfig     `yaml:"mongo"`
	Cassandra CassandraConfig `yaml:"cassandra"`
	// Checkpoints is where durable state and the audit log live.
	Checkpoints CheckpointsConfig `yaml:"checkpoints"`
	Admin       AdminConfig       `yaml:"admin"`
	Capture     capture.Config    `yaml:"capture"`
	Sink        sink.Config       `yaml:"sink"`
	// Rollout is the plan: stages, gates, triggers (see the rollout package).
	Rollout   rollout.Config   `yaml:"rollout"`
	Reconcile reconcile.Config `yaml:"reconcile"`
	// Election makes one daemon of several the leader, which alone runs
	// scheduled reconcile rounds and evaluates the rollout plan.
	Election leader.Config `yaml:"election"`
	Log      LogConfig     `yaml:"log"`
	// Audit chains the audit log with an HMAC (see audit.go).
	Audit AuditConfig `yaml:"audit"`
}

// TLSConfig names PEM files; empty fields are not used.
type TLSConfig struct {
	Enabled  bool   `yaml:"enabled"`
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// KafkaConfig connects to Kafka.
type KafkaConfig struct {
	Brokers []string  `yaml:"brokers"`
	TLS     TLSConfig `yaml:"tls"`
	SASL    struct {
		// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
		Mechanism string `yaml:"mechanism"`
		Username  string `yaml:"username"`
		// PasswordFile holds the password; TIDEMARK_KAFKA_SASL_PASSWORD also works.
		PasswordFile string `yaml:"password_file"`
	} `yaml:"sasl"`
}

// MongoConfig connects to the source.
type MongoConfig struct {
	// URI without credentials; put credentials in URIFile or TIDEMARK_MONGO_URI instead.
	URI string `yaml:"uri"`
	// URIFile holds a full URI (with credentials); it wins over URI.
	URIFile string    `yaml:"uri_file"`
	TLS     TLSConfig `yaml:"tls"`
	// envURI is TIDEMARK_MONGO_URI: it may carry credentials (the
	// environment is where secrets belong) and wins over both.
	envURI string
}

// CassandraConfig connects to the target.
type CassandraConfig struct {
	Hosts        []string  `yaml:"hosts"`
	Username     string    `yaml:"username"`
	PasswordFile string    `yaml:"password_file"`
	TLS          TLSConfig `yaml:"tls"`
	// Timeout per request. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// CheckpointsConfig selects the state store.
type CheckpointsConfig struct {
	// Kind is "kafka" (default: a compacted topic, survives the machine and is
	// shared by several daemons) or "file" (one machine, single-process runs).
	Kind string `yaml:"kind"`
	// Dir of the file store. Default ./tidemark-state. Only for kind file.
	Dir string `yaml:"dir"`
	// Topic of the Kafka store. Default "<capture.topic_prefix>.checkpoints".
	Topic string `yaml:"topic"`
	// Partitions, ReplicationFactor and MinInsyncReplicas apply when tidemark
	// creates the topic. Defaults: 1 (one total order), -1 and 0 (the
	// broker's defaults).
	Partitions        int32 `yaml:"partitions"`
	ReplicationFactor int16 `yaml:"replication_factor"`
	MinInsyncReplicas int   `yaml:"min_insync_replicas"`
}

// OpenCheckpoints opens the store the config names.
func (c *Config) OpenCheckpoints(ctx context.Context, log *slog.Logger, reg prometheus.Registerer) (checkpoints.Store, error) {
	// Return a nil interface, not a nil pointer in one, on failure.
	if c.Checkpoints.Kind == "file" {
		s, err := checkpoints.OpenFile(c.Checkpoints.Dir)
		if err != nil {
			return nil, err
		}
		return c.withAuditChain(s, log, reg)
	}
	kopts, err := c.KafkaOpts()
	if err != nil {
		return nil, err
	}
	cp := c.Checkpoints
	s, err := checkpoints.OpenKafka(ctx, cp.Topic, kopts, checkpoints.KafkaPartitions(cp.Partitions),
		checkpoints.KafkaReplicationFactor(cp.ReplicationFactor), checkpoints.KafkaMinInsyncReplicas(cp.MinInsyncReplicas),
		checkpoints.KafkaLogger(log.With("stage", "checkpoints")), checkpoints.KafkaRegisterer(reg))
	if err != nil {
		return nil, err
	}
	return c.withAuditChain(s, log, reg)
}

// AdminConfig is the admin API.
type AdminConfig struct {
	// Listen address. Default 127.0.0.1:7070.
	Listen string `yaml:"listen"`
	// TokensFile holds "name:token" lines.
	TokensFile string `yaml:"tokens_file"`
	// OpenStatus lets GET routes answer without a token.
	OpenStatus bool   `yaml:"open_status"`
	TLSCert    string `yaml:"tls_cert"`
	TLSKey     string `yaml:"tls_key"`
}

// LogConfig sets slog.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// envOverrides are the fields settable from the environment.
var envOverrides = map[string]func(*Config, string){
	"TIDEMARK_ROLES":             func(c *Config, v string) { c.Roles = SplitList(v) },
	"TIDEMARK_KAFKA_BROKERS":     func(c *Config, v string) { c.Kafka.Brokers = SplitList(v) },
	"TIDEMARK_MONGO_URI":         func(c *Config, v string) { c.Mongo.envURI = v },
	"TIDEMARK_CASSANDRA_HOSTS":   func(c *Config, v string) { c.Cassandra.Hosts = SplitList(v) },
	"TIDEMARK_ADMIN_LISTEN":      func(c *Config, v string) { c.Admin.Listen = v },
	"TIDEMARK_ADMIN_TOKENS_FILE": func(c *Config, v string) { c.Admin.TokensFile = v },
	"TIDEMARK_CHECKPOINTS_DIR":   func(c *Config, v string) { c.Checkpoints.Dir = v },
	"TIDEMARK_CHECKPOINTS_KIND":  func(c *Config, v string) { c.Checkpoints.Kind = v },
	"TIDEMARK_CHECKPOINTS_TOPIC": func(c *Config, v string) { c.Checkpoints.Topic = v },
	"TIDEMARK_SPEC":              func(c *Config, v string) { c.Spec = v },
	"TIDEMARK_LOG_LEVEL":         func(c *Config, v string) { c.Log.Level = v },
	"TIDEMARK_SINK_INSTANCE_ID":  func(c *Config, v string) { c.Sink.InstanceID = v },
}

// SplitList splits a comma-separated list, dropping empty entries.
func SplitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Load reads path, applies environment overrides and defaults, and
// validates, listing every problem at once.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(b, os.Getenv)
}

// Parse is Load of a file's bytes, with getenv for the environment.
func Parse(b []byte, getenv func(string) string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for k, set := range envOverrides {
		if v := getenv(k); v != "" {
			set(&c, v)
		}
	}
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// FromEnv is the configuration of no file: the defaults with the
// environment's overrides. It is not validated: it is for commands that
// need only connections (tidemark validate), not a daemon's whole setup.
func FromEnv(getenv func(string) string) *Config {
	var c Config
	for k, set := range envOverrides {
		if v := getenv(k); v != "" {
			set(&c, v)
		}
	}
	c.applyDefaults()
	return &c
}

func (c *Config) applyDefaults() {
	if len(c.Roles) == 0 {
		c.Roles = []string{"capture", "sink"}
	}
	if len(c.Kafka.Brokers) == 0 {
		c.Kafka.Brokers = []string{"127.0.0.1:9092"}
	}
	if c.Mongo.URI == "" && c.Mongo.URIFile == "" && c.Mongo.envURI == "" {
		c.Mongo.URI = "mongodb://127.0.0.1:27017"
	}
	if len(c.Cassandra.Hosts) == 0 {
		c.Cassandra.Hosts = []string{"127.0.0.1:9042"}
	}
	if c.Cassandra.Timeout == 0 {
		c.Cassandra.Timeout = 10 * time.Second
	}
	if c.Checkpoints.Kind == "" {
		c.Checkpoints.Kind = "kafka"
	}
	if c.Checkpoints.Kind == "file" && c.Checkpoints.Dir == "" {
		c.Checkpoints.Dir = "tidemark-state"
	}
	if c.Checkpoints.Kind == "kafka" {
		if c.Checkpoints.Topic == "" {
			c.Checkpoints.Topic = cmp.Or(c.Capture.TopicPrefix, envelope.DefaultTopicPrefix) + ".checkpoints"
		}
		if c.Checkpoints.Partitions == 0 {
			c.Checkpoints.Partitions = 1
		}
		if c.Checkpoints.ReplicationFactor == 0 {
			c.Checkpoints.ReplicationFactor = -1
		}
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:7070"
	}
	c.Capture = c.Capture.WithDefaults()
	// The sink reads what capture writes: an unset sink prefix is capture's,
	// while one the config spells out, even "tidemark", is kept as written.
	if c.Sink.TopicPrefix == "" {
		c.Sink.TopicPrefix = c.Capture.TopicPrefix
	}
	c.Sink = c.Sink.WithDefaults()
	if c.Sink.InstanceID == "" {
		c.Sink.InstanceID = defaultInstanceID(c.Admin.Listen)
	}
	c.Rollout = c.Rollout.WithDefaults()
	c.Reconcile = c.Reconcile.WithDefaults()
	if c.Reconcile.SinkGroup == "" {
		c.Reconcile.SinkGroup = c.Sink.Group
	}
	c.Election = c.Election.WithDefaults(c.Capture.TopicPrefix)
}

// HasRole says whether the daemon runs role r (capture, sink).
func (c *Config) HasRole(r string) bool {
	for _, x := range c.Roles {
		if x == r {
			return true
		}
	}
	return false
}

func (c *Config) validate() error {
	var errs []error
	for _, r := range c.Roles {
		if r != "capture" && r != "sink" {
			errs = append(errs, fmt.Errorf("roles: unknown role %q (capture, sink)", r))
		}
	}
	if c.Spec == "" && c.HasRole("sink") {
		errs = append(errs, errors.New("spec: the sink role needs a mapping spec path"))
	}
	errs = append(errs, c.Checkpoints.validate()...)
	if c.Admin.TokensFile == "" {
		errs = append(errs, errors.New("admin.tokens_file: required (name:token lines); the admin API can pause and rewind"))
	}
	if (c.Admin.TLSCert == "") != (c.Admin.TLSKey == "") {
		errs = append(errs, errors.New("admin.tls_cert and admin.tls_key go together"))
	}
	switch c.Kafka.SASL.Mechanism {
	case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		errs = append(errs, fmt.Errorf("kafka.sasl.mechanism: %q (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)", c.Kafka.SASL.Mechanism))
	}
	if c.Mongo.URI != "" && strings.Contains(c.Mongo.URI, "@") {
		errs = append(errs, errors.New("mongo.uri: credentials do not belong in the config file; use mongo.uri_file or TIDEMARK_MONGO_URI"))
	}
	if c.HasRole("capture") {
		if err := c.Capture.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.Sink.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Reconcile.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Sink.TopicPrefix != c.Capture.TopicPrefix {
		errs = append(errs, errors.New("sink.topic_prefix must equal capture.topic_prefix"))
	}
	if err := c.Rollout.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Election.Validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.checkValues()...)
	if len(errs) > 0 {
		return fmt.Errorf("config has %d problem(s):\n  %w", len(errs), joined(errs))
	}
	return nil
}

func (cp CheckpointsConfig) validate() []error {
	var errs []error
	switch cp.Kind {
	case "kafka":
		if cp.Dir != "" {
			errs = append(errs, errors.New("checkpoints.dir: only for kind file; the kafka store keeps nothing on disk"))
		}
		if len(cp.Topic) > 249 || strings.Trim(cp.Topic, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" || cp.Topic == "." || cp.Topic == ".." {
			errs = append(errs, fmt.Errorf("checkpoints.topic: %q is not a Kafka topic name (letters, digits, '.', '_', '-', at most 249)", cp.Topic))
		}
		if cp.Partitions < 1 {
			errs = append(errs, fmt.Errorf("checkpoints.partitions: %d; at least 1 (1 keeps one total order)", cp.Partitions))
		}
		if cp.ReplicationFactor < -1 {
			errs = append(errs, fmt.Errorf("checkpoints.replication_factor: %d; -1 (broker default) or at least 1", cp.ReplicationFactor))
		}
		if cp.MinInsyncReplicas < 0 || cp.ReplicationFactor > 0 && cp.MinInsyncReplicas > int(cp.ReplicationFactor) {
			errs = append(errs, fmt.Errorf("checkpoints.min_insync_replicas: %d; 0 (broker default) up to the replication factor; Kafka silently caps a higher value", cp.MinInsyncReplicas))
		}
	case "file":
		if cp.Topic != "" || cp.Partitions != 0 || cp.ReplicationFactor != 0 || cp.MinInsyncReplicas != 0 {
			errs = append(errs, errors.New("checkpoints.topic, partitions, replication_factor, min_insync_replicas: only for kind kafka"))
		}
	default:
		errs = append(errs, fmt.Errorf("checkpoints.kind: %q is not available; use \"kafka\" (default) or \"file\"", cp.Kind))
	}
	return errs
}

type joined []error

func (j joined) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = strings.ReplaceAll(e.Error(), "\n", "\n  ")
	}
	return strings.Join(s, "\n  ")
}
func (j joined) Unwrap() []error { return j }

// Warnings are settings that work but expose something; run logs them at
// start.
func (c *Config) Warnings() []string {
	var w []string
	if c.Kafka.SASL.Mechanism == "PLAIN" && !c.Kafka.TLS.Enabled {
		w = append(w, "kafka.sasl.mechanism PLAIN without kafka.tls.enabled sends the password in clear text; enable TLS or use SCRAM")
	}
	return w
}

// secret reads a secret from a file, falling back to an environment variable.
func secret(file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("secret file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return os.Getenv(env), nil
}

func tlsConfig(t TLSConfig) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificates in %s", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// KafkaOpts are the connection options every Kafka client of the daemon uses.
func (c *Config) KafkaOpts() ([]kgo.Opt, error) {
	// franz-go refreshes metadata at most every 5 s by default, so a
	// record for a topic or partition it has not seen yet (a topic the
	// daemon just created, a partition just added) waited up to 5 s. A
	// quarter second keeps the refreshes cheap and the wait short.
	opts := []kgo.Opt{kgo.SeedBrokers(c.Kafka.Brokers...), kgo.MetadataMinAge(250 * time.Millisecond)}
	tc, err := tlsConfig(c.Kafka.TLS)
	if err != nil {
		return nil, fmt.Errorf("kafka tls: %w", err)
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if m := c.Kafka.SASL.Mechanism; m != "" {
		pw, err := secret(c.Kafka.SASL.PasswordFile, "TIDEMARK_KAFKA_SASL_PASSWORD")
		if err != nil {
			return nil, err
		}
		switch m {
		case "PLAIN":
			opts = append(opts, kgo.SASL(plain.Auth{User: c.Kafka.SASL.Username, Pass: pw}.AsMechanism()))
		case "SCRAM-SHA-256":
			opts = append(opts, kgo.SASL(scram.Auth{User: c.Kafka.SASL.Username, Pass: pw}.AsSha256Mechanism()))
		case "SCRAM-SHA-512":
			opts = append(opts, kgo.SASL(scram.Auth{User: c.Kafka.SASL.Username, Pass: pw}.AsSha512Mechanism()))
		}
	}
	return opts, nil
}

// MongoOptions are the source's client options: the URI (from the environment,
// a file or the config, in that order), TLS.
func (c *Config) MongoOptions() (*options.ClientOptions, error) {
	uri := c.Mongo.URI
	switch {
	case c.Mongo.envURI != "":
		uri = c.Mongo.envURI
	case c.Mongo.URIFile != "":
		b, err := os.ReadFile(c.Mongo.URIFile)
		if err != nil {
			return nil, fmt.Errorf("mongo.uri_file: %w", err)
		}
		uri = strings.TrimSpace(string(b))
	}
	o := options.Client().ApplyURI(uri).SetAppName("tidemark")
	tc, err := tlsConfig(c.Mongo.TLS)
	if err != nil {
		return nil, fmt.Errorf("mongo tls: %w", err)
	}
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	return o, nil
}

// CassandraCluster is the target's cluster config: hosts, timeouts, auth, TLS.
func (c *Config) CassandraCluster() (*gocql.ClusterConfig, error) {
	cl := gocql.NewCluster(c.Cassandra.Hosts...)
	cl.Timeout = c.Cassandra.Timeout
	cl.ConnectTimeout = c.Cassandra.Timeout
	if c.Cassandra.Username != "" {
		pw, err := secret(c.Cassandra.PasswordFile, "TIDEMARK_CASSANDRA_PASSWORD")
		if err != nil {
			return nil, err
		}
		cl.Authenticator = gocql.PasswordAuthenticator{Username: c.Cassandra.Username, Password: pw}
	}
	tc, err := tlsConfig(c.Cassandra.TLS)
	if err != nil {
		return nil, fmt.Errorf("cassandra tls: %w", err)
	}
	if tc != nil {
		cl.SslOpts = &gocql.SslOptions{Config: tc}
	}
	return cl, nil
}

// NewLogger is the daemon's and the CLI's slog logger, on stderr.
func NewLogger(c LogConfig) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(strings.ToUpper(cmp.Or(c.Level, "info"))))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// defaultInstanceID is the sink's static group member id when the config
// names none: "<hostname>-<admin port>", stable across restarts of one daemon
// and distinct between daemons (no two on one host share an admin port). An
// admin port of 0 is chosen anew on each start, so it gives no id: the sink
// is then a dynamic member, as it is when the hostname cannot be read.
func defaultInstanceID(listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" || port == "" {
		return ""
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return ""
	}
	return host + "-" + port
}
