//go:build integration

package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"github.com/tidemarkhq/tidemark/transform"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// childEnv selects the sink-process mode of the test binary (re-exec), so the
// parent can SIGKILL a real sink process.
const childEnv = "TIDEMARK_SINK_CHILD"

type childConfig struct {
	Spec     string `json:"spec"`
	Prefix   string `json:"prefix"`
	Group    string `json:"group"`
	StoreDir string `json:"store_dir"`
	// InstanceID makes the child a static group member.
	InstanceID string `json:"instance_id,omitempty"`
}

func TestMain(m *testing.M) { testbed.ChildMain(m, childEnv, runChild) }

func runChild(conf string) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(conf), &cc); err != nil {
		return 2
	}
	ctx := context.Background()
	m, err := transform.Parse([]byte(cc.Spec))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s := testbed.Cassandra(childTB{})
	store, _ := checkpoints.OpenFile(cc.StoreDir)
	w, err := NewCassandraWriter(ctx, s, m, "ONE")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sk, err := New(Config{Group: cc.Group, TopicPrefix: cc.Prefix, InstanceID: cc.InstanceID}, Deps{KafkaOpts: []kgo.Opt{kgo.SeedBrokers(testbed.KafkaBrokers()...)},
		Writer: w, Mapping: m, Store: store, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := sk.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childTB lets testbed helpers run in the child process.
type childTB struct{ testing.TB }

func (childTB) Helper()                   {}
func (childTB) Fatalf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...); os.Exit(2) }
func (childTB) Cleanup(func())            {}

// TestIntegrationSinkSurvivesKills: 20,000 changes flow from MongoDB through
// capture while the sink process is SIGKILLed three times at random moments
// and restarted; afterwards Cassandra equals the transform of the source.
func TestIntegrationSinkSurvivesKills(t *testing.T) {
	const existing, changes = 5000, 20000
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	brokers := testbed.Kafka(t)
	db := testbed.UniqueName(t, "kill")
	ns := db + ".users"
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	m, specText := testbed.UsersMapping(t, s, ns, testbed.UniqueName(t, "ks"))
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	docs := make([]any, existing)
	for i := range docs {
		docs[i] = userDoc(int64(i), fmt.Sprintf("k%d@x.org", i), 0, true)
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	store, _ := checkpoints.OpenFile(t.TempDir())
	prefix := testbed.UniqueName(t, "kill")
	cp, err := capture.New(capture.Config{TopicPrefix: prefix, Namespaces: []string{ns}, Partitions: 6}, capture.Deps{Mongo: mc, KafkaOpts: []kgo.Opt{kgo.SeedBrokers(brokers...)}, Store: store, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	cctx, stopCapture := context.WithCancel(ctx)
	defer stopCapture()
	go cp.Run(cctx)

	cc, _ := json.Marshal(childConfig{Spec: specText, Prefix: prefix, Group: testbed.UniqueName(t, "g"), StoreDir: t.TempDir()})
	start := func() *exec.Cmd { return testbed.StartChild(t, childEnv, string(cc)) }
	child := start()
	rng := rand.New(rand.NewPCG(5, 6))
	killAt := map[int]bool{}
	for len(killAt) < 3 {
		killAt[2000+rng.IntN(changes-4000)] = true
	}
	for i := 0; i < changes; i++ {
		id := int64(rng.IntN(existing + 500))
		var err error
		switch rng.IntN(5) {
		case 0:
			_, err = coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		case 1:
			_, err = coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, userDoc(id, fmt.Sprintf("r%d-%d@x.org", id, i), i, i%2 == 0), options.Replace().SetUpsert(true))
		default:
			_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf("e%d-%d@x.org", id, i)}}}}, options.Update().SetUpsert(true))
		}
		if err != nil {
			t.Fatal(err)
		}
		if killAt[i] {
			child.Process.Signal(syscall.SIGKILL)
			child.Wait()
			t.Logf("sink SIGKILLed after %d changes", i)
			child = start()
		}
	}
	want := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
	for deadline := time.Now().Add(3 * time.Minute); ; {
		got := testbed.Snapshot(t, s, m, ns)
		if bytes.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Cassandra never matched the source; first difference:\n got %q\nwant %q", testbed.FirstDiff(got, want), testbed.FirstDiff(want, got))
		}
		time.Sleep(500 * time.Millisecond)
	}
}
