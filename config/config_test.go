package config

import (
	"os"
	"strings"
	"testing"
)

func TestConfigListsEveryProblem(t *testing.T) {
	bad := `roles: [capture, sink, dancer]
checkpoints: {kind: etcd}
mongo: {uri: "mongodb://admin:hunter2@db:27017"}
kafka: {sasl: {mechanism: GSSAPI}}
admin: {tls_cert: /x.pem}
capture: {namespaces: [nodot]}
`
	_, err := Parse([]byte(bad), func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{`unknown role "dancer"`, "spec:", `"etcd" is not available`, "tokens_file", "tls_cert and admin.tls_key",
		"GSSAPI", "credentials do not belong", `"nodot" is not db.collection`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Error("a password reached the error message")
	}
	if _, err := Parse([]byte("spec: x\nbogus: 1\n"), func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown key: %v", err)
	}
}

func TestConfigEnvOverridesAndDefaults(t *testing.T) {
	good := `spec: examples/specs/users.yaml
admin: {tokens_file: /etc/tidemark/tokens}
capture: {namespaces: [app.users], topic_prefix: mig}
`
	env := map[string]string{"TIDEMARK_KAFKA_BROKERS": "k1:9092, k2:9092", "TIDEMARK_ADMIN_LISTEN": "127.0.0.1:9999", "TIDEMARK_ROLES": "sink"}
	c, err := Parse([]byte(good), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Kafka.Brokers, ",") != "k1:9092,k2:9092" || c.Admin.Listen != "127.0.0.1:9999" || strings.Join(c.Roles, ",") != "sink" {
		t.Fatalf("env overrides not applied: %v %s %v", c.Kafka.Brokers, c.Admin.Listen, c.Roles)
	}
	if c.Sink.TopicPrefix != "mig" || c.Sink.Group != "tidemark-sink" || c.Capture.Partitions != 12 {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestConfigTopicPrefixes: an unset sink.topic_prefix is capture's, unset
// both are envelope.DefaultTopicPrefix, and a sink prefix the config spells
// out is taken as written, even when it is the default's own spelling: one
// that differs from capture's is refused, not silently replaced.
func TestConfigTopicPrefixes(t *testing.T) {
	for _, c := range []struct{ yaml, capture, sink, checkpoints, err string }{
		{yaml: "capture: {namespaces: [app.users]}", capture: "tidemark", sink: "tidemark", checkpoints: "tidemark.checkpoints"},
		{yaml: "capture: {namespaces: [app.users], topic_prefix: mig}", capture: "mig", sink: "mig", checkpoints: "mig.checkpoints"},
		{yaml: "capture: {namespaces: [app.users], topic_prefix: mig}\nsink: {topic_prefix: mig}", capture: "mig", sink: "mig", checkpoints: "mig.checkpoints"},
		{yaml: "capture: {namespaces: [app.users], topic_prefix: mig}\nsink: {topic_prefix: tidemark}", err: "sink.topic_prefix must equal capture.topic_prefix"},
		{yaml: "capture: {namespaces: [app.users]}\nsink: {topic_prefix: other}", err: "sink.topic_prefix must equal capture.topic_prefix"},
	} {
		cfg, err := Parse([]byte("spec: examples/specs/users.yaml\nadmin: {tokens_file: /t}\n"+c.yaml+"\n"), func(string) string { return "" })
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.yaml, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if cfg.Capture.TopicPrefix != c.capture || cfg.Sink.TopicPrefix != c.sink || cfg.Checkpoints.Topic != c.checkpoints {
			t.Errorf("%q: capture %q, sink %q, checkpoints %q; want %q, %q, %q", c.yaml,
				cfg.Capture.TopicPrefix, cfg.Sink.TopicPrefix, cfg.Checkpoints.Topic, c.capture, c.sink, c.checkpoints)
		}
	}
}

// TestConfigMongoCredentials: credentials are refused in the config file's
// mongo.uri and taken from TIDEMARK_MONGO_URI or mongo.uri_file, where
// docs/configuration.md says they belong; the environment wins.
func TestConfigMongoCredentials(t *testing.T) {
	dir := t.TempDir()
	uriFile := dir + "/uri"
	if err := os.WriteFile(uriFile, []byte("mongodb://file:pw@127.0.0.1:27018\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "spec: examples/specs/users.yaml\nadmin: {tokens_file: /etc/tidemark/tokens}\ncapture: {namespaces: [app.users]}\n"
	for _, tc := range []struct {
		name, mongo, env, wantHosts, wantUser, wantErr string
	}{
		{name: "credentials in the file's uri", mongo: "mongo: {uri: 'mongodb://u:pw@127.0.0.1:27017'}\n", wantErr: "credentials do not belong"},
		{name: "credentials in the environment", env: "mongodb://envuser:pw@127.0.0.1:27019", wantHosts: "127.0.0.1:27019", wantUser: "envuser"},
		{name: "environment over uri and uri_file", mongo: "mongo: {uri: 'mongodb://127.0.0.1:27017', uri_file: " + uriFile + "}\n",
			env: "mongodb://envuser:pw@127.0.0.1:27019", wantHosts: "127.0.0.1:27019", wantUser: "envuser"},
		{name: "uri_file over uri", mongo: "mongo: {uri: 'mongodb://127.0.0.1:27017', uri_file: " + uriFile + "}\n", wantHosts: "127.0.0.1:27018", wantUser: "file"},
		{name: "default", wantHosts: "127.0.0.1:27017"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(base+tc.mongo), func(k string) string {
				if k == "TIDEMARK_MONGO_URI" {
					return tc.env
				}
				return ""
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			o, err := c.MongoOptions()
			if err != nil {
				t.Fatal(err)
			}
			user := ""
			if o.Auth != nil {
				user = o.Auth.Username
			}
			if strings.Join(o.Hosts, ",") != tc.wantHosts || user != tc.wantUser {
				t.Fatalf("hosts %v user %q, want %s %q", o.Hosts, user, tc.wantHosts, tc.wantUser)
			}
		})
	}
}

func TestConfigWarnsOfPlainWithoutTLS(t *testing.T) {
	base := "spec: examples/specs/users.yaml\nadmin: {tokens_file: /etc/tidemark/tokens}\ncapture: {namespaces: [app.users]}\n"
	for _, tc := range []struct {
		kafka string
		warn  bool
	}{
		{"kafka: {sasl: {mechanism: PLAIN, username: u}}\n", true},
		{"kafka: {sasl: {mechanism: PLAIN, username: u}, tls: {enabled: true}}\n", false},
		{"kafka: {sasl: {mechanism: SCRAM-SHA-512, username: u}}\n", false},
		{"", false},
	} {
		c, err := Parse([]byte(base+tc.kafka), func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		w := strings.Join(c.Warnings(), "\n")
		if got := strings.Contains(w, "PLAIN without kafka.tls.enabled"); got != tc.warn {
			t.Errorf("%q: warnings %q, want the PLAIN warning: %v", tc.kafka, w, tc.warn)
		}
	}
}

// TestSinkInstanceID: the sink's static member id defaults to
// "<hostname>-<admin port>", the config and TIDEMARK_SINK_INSTANCE_ID set it,
// and an admin port of 0 (a new one each start) gives none.
func TestSinkInstanceID(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no hostname")
	}
	const base = "spec: x\ncapture: {namespaces: [app.users]}\n"
	for _, tc := range []struct {
		name, yaml, env, want string
	}{
		{"default", base + "admin: {tokens_file: t, listen: 127.0.0.1:7071}\n", "", host + "-7071"},
		{"default port", base + "admin: {tokens_file: t}\n", "", host + "-7070"},
		{"config", base + "admin: {tokens_file: t}\nsink: {instance_id: sink-a}\n", "", "sink-a"},
		{"env wins", base + "admin: {tokens_file: t}\nsink: {instance_id: sink-a}\n", "tidemark-sink-2", "tidemark-sink-2"},
		{"port 0", base + "admin: {tokens_file: t, listen: 127.0.0.1:0}\n", "", ""},
	} {
		c, err := Parse([]byte(tc.yaml), func(k string) string {
			if k == "TIDEMARK_SINK_INSTANCE_ID" {
				return tc.env
			}
			return ""
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.Sink.InstanceID != tc.want {
			t.Errorf("%s: instance id %q, want %q", tc.name, c.Sink.InstanceID, tc.want)
		}
	}
}
