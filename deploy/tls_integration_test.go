//go:build integration

package deploy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// makeSecrets runs compose/make-secrets into dir/secrets and returns that folder.
func makeSecrets(t *testing.T, dir string) string {
	t.Helper()
	sec := filepath.Join(dir, "secrets")
	if out, err := exec.Command("sh", "compose/make-secrets", sec).CombinedOutput(); err != nil {
		t.Fatalf("make-secrets: %v\n%s", err, out)
	}
	return sec
}

// caClient is an HTTP client that trusts only the CA in caFile.
func caClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// cliEnv is the test's environment without the CLI's own variables, so only
// what a check sets reaches the CLI.
func cliEnv(set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIDEMARK_ADDR=") && !strings.HasPrefix(kv, "TIDEMARK_CA_FILE=") &&
			!strings.HasPrefix(kv, "TIDEMARK_TOKEN") {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// checkTLSClients checks the daemon at base (https://host:port) from the
// clients' side: `tidemark status` with --ca-file caFile is answered; without
// it the CLI refuses the certificate; a Go client with the system roots
// refuses it; a plain-HTTP request is not served.
func checkTLSClients(t *testing.T, ctx context.Context, bin, base, caFile, tokenFile string) {
	t.Helper()
	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"status", "--addr", base, "--token-file", tokenFile}, args...)...)
		cmd.Env = cliEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := cli("--ca-file", caFile); err != nil || !strings.Contains(out, "roles:") {
		t.Errorf("tidemark status --addr %s --ca-file: %v\n%s", base, err, out)
	}
	if out, err := cli(); err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("tidemark status --addr %s without --ca-file: err %v, want a certificate error\n%s", base, err, out)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/healthz", nil)
	_, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Errorf("GET %s/healthz with the system roots: err %v, want the certificate refused", base, err)
	}
	plain := "http://" + strings.TrimPrefix(base, "https://") + "/healthz"
	req, _ = http.NewRequestWithContext(ctx, "GET", plain, nil)
	if resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("GET %s answered 200 in plain HTTP: %s", plain, b)
		}
	}
}

// TestIntegrationComposeLayout runs the real binary with the Compose layout's
// daemon config (deploy/compose/tidemark.yaml) and the files make-secrets
// makes, each found where docker-compose.yaml mounts it: only the server
// addresses, names and the listen port change. The admin API serves TLS;
// the CLI as the tidemark container runs it (its TIDEMARK_ADDR,
// TIDEMARK_CA_FILE and TIDEMARK_TOKEN_FILE) and Prometheus as prometheus.yml
// configures it (scheme, CA, token, server name of its target) are answered; a
// client without the CA is refused; documents move into Cassandra.
func TestIntegrationComposeLayout(t *testing.T) {
	s := testbed.Cassandra(t)
	mc := testbed.Mongo(t)
	testbed.Kafka(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tidemark")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/tidemark").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sec := makeSecrets(t, dir)
	compose := yamlMap(t, "compose/docker-compose.yaml")
	// mounted resolves a path inside a service's container to the file on
	// this machine, through the service's Compose secrets.
	mounted := func(service, p string) string {
		t.Helper()
		name, ok := strings.CutPrefix(p, "/run/secrets/")
		if ok {
			for _, s := range anyStrings(list(compose, "services", service, "secrets")) {
				if s == name {
					f, ok := strings.CutPrefix(str(compose, "secrets", name, "file"), "./secrets/")
					if ok {
						return filepath.Join(sec, f)
					}
				}
			}
		}
		t.Fatalf("%s: %s is not a make-secrets file mounted in the container", service, p)
		return ""
	}

	db := testbed.UniqueName(t, "compose")
	ns := db + ".users"
	ks := testbed.UniqueName(t, "compose")
	m, specText := testbed.UsersMapping(t, s, ns, ks)
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(specText), 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := testbed.UniqueName(t, "compose")
	const addr = "127.0.0.1:17183"

	cfg := yamlMap(t, "compose/tidemark.yaml")
	set := func(v any, keys ...string) {
		mp := cfg
		for _, k := range keys[:len(keys)-1] {
			mp = mp[k].(map[string]any)
		}
		mp[keys[len(keys)-1]] = v
	}
	for _, k := range []string{"tokens_file", "tls_cert", "tls_key"} {
		set(mounted("tidemark", str(cfg, "admin", k)), "admin", k)
	}
	set(filepath.Join(dir, "spec.yaml"), "spec")
	set(testbed.KafkaBrokers(), "kafka", "brokers")
	set(map[string]any{"uri": testbed.MongoURI()}, "mongo")
	set(testbed.CassandraHosts(), "cassandra", "hosts")
	set(prefix+".checkpoints", "checkpoints", "topic")
	set(addr, "admin", "listen")
	set(prefix, "capture", "topic_prefix")
	set([]string{ns}, "capture", "namespaces")
	set(3, "capture", "partitions")
	set(prefix+"-g", "sink", "group")
	set("ONE", "sink", "consistency")
	set(filepath.Join(dir, "reports"), "reconcile", "report_dir")
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "tidemark.yaml")
	if err := os.WriteFile(cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	coll := mc.Database(db).Collection("users")
	t.Cleanup(func() { mc.Database(db).Drop(context.Background()) })
	var docs []any
	for i := 0; i < 200; i++ {
		docs = append(docs, bson.D{{Key: "_id", Value: int64(i)}, {Key: "email", Value: fmt.Sprintf("c%d@x.org", i)}})
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	testbed.RunDaemon(t, ctx, bin, "compose daemon", cfgPath)

	// The CLI as the tidemark container runs it, with the published port.
	tenv, _ := get(compose, "services", "tidemark", "environment").(map[string]any)
	u, err := url.Parse(tenv["TIDEMARK_ADDR"].(string))
	if err != nil || u.Scheme != "https" {
		t.Fatalf("tidemark TIDEMARK_ADDR %v: %v", tenv["TIDEMARK_ADDR"], err)
	}
	_, port, _ := net.SplitHostPort(addr)
	cliAddr := "https://" + net.JoinHostPort(u.Hostname(), port)
	caFile := mounted("tidemark", tenv["TIDEMARK_CA_FILE"].(string))
	tokenFile := mounted("tidemark", tenv["TIDEMARK_TOKEN_FILE"].(string))
	waitHTTP(t, ctx, caClient(t, caFile), "compose daemon", cliAddr+"/readyz", "")
	cmd := exec.CommandContext(ctx, bin, "status")
	cmd.Env = cliEnv("TIDEMARK_ADDR="+cliAddr, "TIDEMARK_CA_FILE="+caFile, "TIDEMARK_TOKEN_FILE="+tokenFile)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "roles: capture,sink") {
		t.Errorf("tidemark status with the container's environment: %v\n%s", err, out)
	}
	checkTLSClients(t, ctx, bin, "https://"+addr, caFile, tokenFile)

	// Prometheus as prometheus.yml has it: its scheme, its CA, its token, and
	// the target's host name as the name the certificate must hold.
	job := get(yamlMap(t, "prometheus/prometheus.yml"), "scrape_configs", "0")
	target := anyStrings(list(job, "static_configs", "0", "targets"))[0]
	host, _, _ := net.SplitHostPort(target)
	promCA := mounted("prometheus", str(job, "tls_config", "ca_file"))
	promToken, err := os.ReadFile(mounted("prometheus", str(job, "authorization", "credentials_file")))
	if err != nil {
		t.Fatal(err)
	}
	prom := caClient(t, promCA)
	tr := prom.Transport.(*http.Transport)
	tr.TLSClientConfig.ServerName = host
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	page := waitHTTP(t, ctx, prom, "prometheus scrape", str(job, "scheme")+"://"+target+str(job, "metrics_path"), strings.TrimSpace(string(promToken)))
	if !bytes.Contains(page, []byte("tidemark_")) {
		t.Errorf("the scrape returned no tidemark_ metric")
	}

	exp := testbed.Expected(t, m, ns, testbed.SourceDocs(t, ctx, coll))
	for deadline := time.Now().Add(2 * time.Minute); ; {
		got := testbed.Snapshot(t, s, m, ns)
		if bytes.Equal(got, exp) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Cassandra does not match the source: got %q want %q", testbed.FirstDiff(got, exp), testbed.FirstDiff(exp, got))
		}
		time.Sleep(300 * time.Millisecond)
	}
}
