//go:build integration

package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/internal/testbed"
	"go.mongodb.org/mongo-driver/bson"
	"go.yaml.in/yaml/v3"
)

// TestIntegrationKubernetesLayout runs the Kubernetes layout on the local
// stack: the real binary twice, once with the ConfigMap's
// tidemark-capture.yaml and once with its tidemark-sink.yaml, changed only in
// server addresses, names (so the run shares the stack with other tests) and
// the replication a single broker allows. It checks what the manifests rely on:
// the probes' routes answer without a token, the two processes move a
// collection into Cassandra together through the shared Kafka checkpoint store,
// a pause asked of the capture process's admin API pauses the sink process
// (any pod answers for all), every tidemark_* family the processes expose
// is one the dashboard test's code scan knows, and the admin API serves TLS
// with the certificate make-secrets makes for the tidemark-tls Secret: the CLI
// with its CA accepts it, a client without the CA refuses it.
func TestIntegrationKubernetesLayout(t *testing.T) {
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	testbed.Kafka(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tidemark")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/tidemark").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	db := testbed.UniqueName(t, "k8s")
	ns := db + ".users"
	ks := testbed.UniqueName(t, "k8s")
	m, specText := testbed.UsersMapping(t, s, ns, ks)
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := layoutToken
	write("spec.yaml", specText)
	write("tokens", "ci:"+token+"\n")
	// The tidemark-tls Secret, as tls-secret.example.yaml says to make it.
	sec := makeSecrets(t, dir)
	tlsFiles := map[string]string{"tls.crt": filepath.Join(sec, "tidemark.pem"), "tls.key": filepath.Join(sec, "tidemark-key.pem")}
	caFile := filepath.Join(sec, "ca.pem")
	hc := caClient(t, caFile)
	prefix := testbed.UniqueName(t, "k8s")

	var cmData struct {
		Data map[string]string `yaml:"data"`
	}
	b, err := os.ReadFile("kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cmData); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{"capture": "127.0.0.1:17181", "sink": "127.0.0.1:17182"}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	var docs []any
	for i := 0; i < 2000; i++ {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("k%d@x.org", i)}, {Key: "age", Value: int32(i % 70)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}

	for _, role := range []string{"capture", "sink"} {
		var cfg map[string]any
		if err := yaml.Unmarshal([]byte(cmData.Data["tidemark-"+role+".yaml"]), &cfg); err != nil {
			t.Fatal(err)
		}
		set := func(v any, keys ...string) {
			mp := cfg
			for _, k := range keys[:len(keys)-1] {
				mp = mp[k].(map[string]any)
			}
			mp[keys[len(keys)-1]] = v
		}
		set(filepath.Join(dir, "spec.yaml"), "spec")
		set(testbed.KafkaBrokers(), "kafka", "brokers")
		set(map[string]any{"uri": testbed.MongoURI()}, "mongo")
		set(testbed.CassandraHosts(), "cassandra", "hosts")
		set(prefix+".checkpoints", "checkpoints", "topic")
		set(1, "checkpoints", "replication_factor")
		set(1, "checkpoints", "min_insync_replicas")
		set(addrs[role], "admin", "listen")
		set(filepath.Join(dir, "tokens"), "admin", "tokens_file")
		// The manifests mount the Secret's keys at /etc/tidemark/tls (TestKubernetes
		// checks the mount): point the same keys at make-secrets' files.
		for _, k := range []string{"tls_cert", "tls_key"} {
			p := str(cfg, "admin", k)
			if filepath.Dir(p) != "/etc/tidemark/tls" || tlsFiles[filepath.Base(p)] == "" {
				t.Fatalf("%s config: admin.%s %q is not a key of the tidemark-tls Secret mount", role, k, p)
			}
			set(tlsFiles[filepath.Base(p)], "admin", k)
		}
		set(prefix, "capture", "topic_prefix")
		set([]string{ns}, "capture", "namespaces")
		set(3, "capture", "partitions")
		set(1, "capture", "replication_factor")
		set(prefix+"-g", "sink", "group")
		set("ONE", "sink", "consistency")
		set(filepath.Join(dir, role+"-reports"), "reconcile", "report_dir")
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		path := write(role+".yaml", string(out))
		testbed.RunDaemon(t, ctx, bin, role+" daemon", path)
	}

	// The probes: no token, as kubelet sends none, over HTTPS.
	for role, addr := range addrs {
		for _, path := range []string{"/healthz", "/readyz"} {
			waitHTTP(t, ctx, hc, role, "https://"+addr+path, "")
		}
	}
	for _, addr := range addrs {
		checkTLSClients(t, ctx, bin, "https://"+addr, caFile, filepath.Join(dir, "tokens"))
	}

	want := func() []byte { return testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll)) }
	waitMatch := func(what string) {
		t.Helper()
		exp := want()
		for deadline := time.Now().Add(2 * time.Minute); ; {
			got := testbed.Snapshot(t, s, m, ns)
			if bytes.Equal(got, exp) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Cassandra does not match the source: got %q want %q", what, testbed.FirstDiff(got, exp), testbed.FirstDiff(exp, got))
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	waitMatch("after backfill")
	for i := 0; i < 300; i++ {
		coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: int64(i)}}, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: fmt.Sprintf("n%d@x.org", i)}}}})
	}
	waitMatch("after live updates")

	// A pause asked of the capture process reaches the sink process through
	// the checkpoint topic.
	topic := prefix + "." + ns
	post := func(path string) {
		t.Helper()
		body := fmt.Sprintf(`{"topic":%q,"reason":"layout test"}`, topic)
		req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addrs["capture"]+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s on the capture process: %d %s", path, resp.StatusCode, b)
		}
	}
	post("/v1/pause")
	waitMetric(t, ctx, hc, "https://"+addrs["sink"]+"/metrics", "tidemark_sink_paused_partitions", "3")
	post("/v1/resume")
	waitMetric(t, ctx, hc, "https://"+addrs["sink"]+"/metrics", "tidemark_sink_paused_partitions", "0")

	// Every family the processes expose is known to the code scan that checks
	// the dashboard, so a metric defined in a way the scan cannot see would
	// show up here.
	cm := scanMetrics(t)
	expect := map[string]string{"capture": "tidemark_capture_events_total", "sink": "tidemark_sink_rows_total"}
	for role, addr := range addrs {
		seen, kafka := false, false
		for _, fam := range families(t, ctx, hc, "https://"+addr+"/metrics") {
			if !strings.HasPrefix(fam, "tidemark_") {
				continue
			}
			// franz-go's kprom plugin defines these, not our code.
			if strings.HasPrefix(fam, "tidemark_kafka_") {
				kafka = true
				continue
			}
			seen = seen || fam == expect[role]
			if _, ok := cm.byName[fam]; !ok {
				t.Errorf("%s exposes %s, which the code scan did not find", role, fam)
			}
		}
		if !seen {
			t.Errorf("the %s process does not expose %s", role, expect[role])
		}
		if role == "sink" && !kafka {
			t.Error("the sink process does not expose its Kafka client's metrics (tidemark_kafka_sink_*)")
		}
	}
}

// waitHTTP waits until url answers 200 to hc.
func waitHTTP(t *testing.T, ctx context.Context, hc *http.Client, what, url, token string) []byte {
	t.Helper()
	var last string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			return b
		}
		last = fmt.Sprintf("HTTP %d %s", resp.StatusCode, b)
	}
	t.Fatalf("%s: %s did not answer 200: %s", what, url, last)
	return nil
}

// waitMetric waits until the unlabelled sample name has value want.
// layoutToken is the operator token of the test; /metrics needs it like every
// route but the probes.
const layoutToken = "layout-test-token-0123456789"

func waitMetric(t *testing.T, ctx context.Context, hc *http.Client, url, name, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		sc := bufio.NewScanner(bytes.NewReader(waitHTTP(t, ctx, hc, name, url, layoutToken)))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
				got = f[1]
			}
		}
		if got == want {
			return
		}
	}
	t.Fatalf("%s = %q, want %s", name, got, want)
}

// families lists the metric families a /metrics page declares (# TYPE lines).
func families(t *testing.T, ctx context.Context, hc *http.Client, url string) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(waitHTTP(t, ctx, hc, "metrics", url, layoutToken)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			out = append(out, f[2])
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s declares no metric family", url)
	}
	return out
}
