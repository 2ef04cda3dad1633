//go:build integration

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/mongo"
)

// daemonEnv is what every test of the real binary starts from: the servers,
// a folder holding the built binary, a users spec mapped into a fresh
// keyspace, and a tokens file with the "ci" operator (whose token is also in
// tokenFile, for the CLI).
type daemonEnv struct {
	s                     *gocql.Session
	mc                    *mongo.Client
	dir, bin              string
	db, ns, ks, tokenFile string
	m                     *transform.Mapping
}

// newDaemonEnv prepares a daemonEnv whose database is named after prefix.
// The binary is built once per test process (testbed.Tidemark).
func newDaemonEnv(t *testing.T, prefix string) *daemonEnv {
	t.Helper()
	e := &daemonEnv{s: testbed.Cassandra(t), mc: testbed.Mongo(t), dir: t.TempDir()}
	testbed.Kafka(t)
	e.bin = testbed.Tidemark(t)
	e.db = testbed.UniqueName(t, prefix)
	e.ns = e.db + ".users"
	e.ks = testbed.UniqueName(t, "ks")
	var specText string
	e.m, specText = testbed.UsersMapping(t, e.s, e.ns, e.ks)
	e.tokenFile = filepath.Join(e.dir, "token")
	for name, body := range map[string]string{"spec.yaml": specText, "tokens": "ci:" + testToken + "\n", "token": testToken} {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// config is the daemon config the tests run: both roles on the stack's
// servers, the spec, checkpoints and tokens in e.dir, the admin API on addr,
// capture and sink named after prefix. captureOpts go inside capture's
// braces after its common options; extra is appended as more sections.
func (e *daemonEnv) config(addr, prefix, captureOpts, extra string) string {
	return fmt.Sprintf(`roles: [capture, sink]
spec: %[1]s/spec.yaml
kafka: {brokers: [%[2]s]}
mongo: {uri: %[3]q}
cassandra: {hosts: [%[4]s]}
checkpoints: {kind: file, dir: %[1]s/state}
admin: {listen: %[5]q, tokens_file: %[1]s/tokens, open_status: true}
capture: {topic_prefix: %[6]s, namespaces: [%[7]s], partitions: 3%[8]s}
sink: {group: %[6]s-g, consistency: ONE, mark_interval: 1s}
`, e.dir, strings.Join(testbed.KafkaBrokers(), ","), testbed.MongoURI(), strings.Join(testbed.CassandraHosts(), ","),
		addr, prefix, e.ns, captureOpts) + extra
}

// TestMain removes the binary newDaemonEnv built once for all the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	testbed.RemoveTidemark()
	os.Exit(code)
}

// writeConfigs writes each named config into the environment's folder.
func (e *daemonEnv) writeConfigs(t *testing.T, configs map[string]string) {
	t.Helper()
	for name, body := range configs {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// leaderOf asks a daemon whom it knows as the elected leader.
func leaderOf(ctx context.Context, ac *admin.Client) (daemon.LeaderInfo, error) {
	var info daemon.LeaderInfo
	err := ac.Do(ctx, "GET", "/v1/leader", nil, &info)
	return info, err
}

// waitFor polls cond every 100 ms until it holds, failing the test after 90 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testbed.Until(t, what, 90*time.Second, cond)
}
