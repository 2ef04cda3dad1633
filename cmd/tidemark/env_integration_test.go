//go:build integration

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
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

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildOut  []byte
)

// newDaemonEnv prepares a daemonEnv whose database is named after prefix.
// The binary is built once per test process.
func newDaemonEnv(t *testing.T, prefix string) *daemonEnv {
	t.Helper()
	e := &daemonEnv{s: testbed.Cassandra(t), mc: testbed.Mongo(t), dir: t.TempDir()}
	testbed.Kafka(t)
	buildOnce.Do(func() {
		d, err := os.MkdirTemp("", "tidemark-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(d, "tidemark")
		buildOut, buildErr = exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build: %v\n%s", buildErr, buildOut)
	}
	e.bin = builtBin
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

// TestMain removes the binary newDaemonEnv built once for all the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}
