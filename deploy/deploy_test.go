package deploy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/transform"
	"go.yaml.in/yaml/v3"
)

// adminPort is the port the image exposes and every config listens on.
const adminPort = "7070"

// TestFilesParse parses every YAML and JSON file under deploy/ (the test stack
// in deploy/local aside), every document of multi-document YAML included.
func TestFilesParse(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == "local" || d.Name() == "secrets" {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml":
			n++
			for i, doc := range yamlDocs(t, p) {
				if doc.Kind == 0 {
					t.Errorf("%s: document %d is empty", p, i)
				}
			}
		case ".json":
			n++
			var v any
			readJSON(t, p, &v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 15 {
		t.Errorf("parsed only %d files", n)
	}
}

func yamlDocs(t *testing.T, p string) []*yaml.Node {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		docs = append(docs, &n)
	}
	return docs
}

func yamlMap(t *testing.T, p string) map[string]any {
	t.Helper()
	docs := yamlDocs(t, p)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", p, len(docs))
	}
	var m map[string]any
	if err := docs[0].Decode(&m); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return m
}

// get walks a decoded YAML/JSON value by keys and list indexes ("0").
func get(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any, keys ...string) string {
	s, _ := get(v, keys...).(string)
	return s
}

func list(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

// TestDockerfile checks the image's promises: a static binary of
// ./cmd/tidemark, a distroless or scratch final stage, a numeric non-root user
// (Kubernetes' runAsNonRoot can only verify a number), the admin port, and no
// HEALTHCHECK (the image has nothing to run one with).
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // instructions per stage
	sc := bufio.NewScanner(bytes.NewReader(bytes.ReplaceAll(b, []byte("\\\n"), []byte(" "))))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(line), "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if strings.HasPrefix(strings.ToUpper(line), "ARG ") {
				continue
			}
			t.Fatalf("instruction before FROM: %s", line)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], line)
	}
	if len(stages) < 2 {
		t.Fatalf("want a build stage and a runtime stage, got %d stages", len(stages))
	}
	all := strings.Join(append(append([]string{}, stages[0]...), stages[len(stages)-1]...), "\n")
	if strings.Contains(strings.ToUpper(all), "HEALTHCHECK") {
		t.Error("HEALTHCHECK: the distroless image cannot run one; probes call /healthz and /readyz")
	}
	build := strings.Join(stages[0], "\n")
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/tidemark"} {
		if !strings.Contains(build, want) {
			t.Errorf("build stage lacks %q", want)
		}
	}
	final := stages[len(stages)-1]
	from := strings.Fields(final[0])[1]
	if !strings.HasPrefix(from, "gcr.io/distroless/static") && from != "scratch" {
		t.Errorf("runtime base %s: want distroless static or scratch", from)
	}
	var user, expose string
	for _, in := range final {
		f := strings.Fields(in)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user = f[1]
		case "EXPOSE":
			expose = f[1]
		case "RUN":
			t.Errorf("RUN in the runtime stage (%s): the base has no shell", in)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || strings.Trim(uid, "0123456789") != "" || strings.Trim(uid, "0") == "" {
		t.Errorf("USER %q: want a numeric non-zero uid", user)
	}
	if expose != adminPort && expose != adminPort+"/tcp" {
		t.Errorf("EXPOSE %q, want %s", expose, adminPort)
	}
	if _, err := os.Stat("docker/Dockerfile.dockerignore"); err != nil {
		t.Errorf("docker/Dockerfile.dockerignore: %v (the build context would carry .cache and .stack)", err)
	}
}

// TestCompose checks the Compose stack: the services the README lists, images
// pinned to a version, a real replica set and KRaft Kafka, tidemark built from
// our Dockerfile with its config and tokens as files, and every file it mounts
// present in the repository.
func TestCompose(t *testing.T) {
	c := yamlMap(t, "compose/docker-compose.yaml")
	services, _ := c["services"].(map[string]any)
	for _, name := range []string{"mongo1", "mongo2", "mongo3", "mongo-init", "kafka", "cassandra", "cassandra-init", "tidemark", "prometheus", "grafana"} {
		if services[name] == nil {
			t.Errorf("service %s is missing", name)
		}
	}
	for name, s := range services {
		img := str(s, "image")
		if img == "" && get(s, "build") == nil {
			t.Errorf("%s: no image and no build", name)
		}
		if name != "tidemark" && (img == "" || !strings.Contains(img, ":") || strings.HasSuffix(img, ":latest")) {
			t.Errorf("%s: image %q is not pinned to a version", name, img)
		}
	}
	// MongoDB: every member in replica set rs0, and an init that runs rs.initiate.
	for _, m := range []string{"mongo1", "mongo2", "mongo3"} {
		cmd := strings.Join(anyStrings(list(services[m], "command")), " ")
		if !strings.Contains(cmd, "--replSet rs0") {
			t.Errorf("%s: command %q does not join replica set rs0", m, cmd)
		}
	}
	init, err := os.ReadFile("compose/mongo/rs-init.js")
	if err != nil || !bytes.Contains(init, []byte("rs.initiate(")) {
		t.Errorf("compose/mongo/rs-init.js must run rs.initiate (%v)", err)
	}
	for _, m := range []string{"mongo1:27017", "mongo2:27017", "mongo3:27017"} {
		if !bytes.Contains(init, []byte(m)) {
			t.Errorf("rs-init.js does not add member %s", m)
		}
	}
	// Kafka in KRaft mode.
	kenv, _ := get(services["kafka"], "environment").(map[string]any)
	if r, _ := kenv["KAFKA_PROCESS_ROLES"].(string); !strings.Contains(r, "controller") || !strings.Contains(r, "broker") {
		t.Errorf("kafka: KAFKA_PROCESS_ROLES %q, want broker,controller (KRaft)", r)
	}
	for k := range kenv {
		if strings.Contains(strings.ToUpper(k), "ZOOKEEPER") {
			t.Errorf("kafka: %s: KRaft needs no ZooKeeper", k)
		}
	}
	if !strings.HasPrefix(str(services["kafka"], "image"), "apache/kafka:") {
		t.Errorf("kafka: image %q, want apache/kafka", str(services["kafka"], "image"))
	}
	// tidemark: built from our Dockerfile, starts after the servers are ready.
	tm := services["tidemark"]
	if str(tm, "build", "dockerfile") != "deploy/docker/Dockerfile" || str(tm, "build", "context") != "../.." {
		t.Errorf("tidemark: build %v, want context ../.. and deploy/docker/Dockerfile", get(tm, "build"))
	}
	for dep, cond := range map[string]string{"mongo-init": "service_completed_successfully", "cassandra-init": "service_completed_successfully", "kafka": "service_healthy"} {
		if got := str(tm, "depends_on", dep, "condition"); got != cond {
			t.Errorf("tidemark depends_on %s: condition %q, want %s", dep, got, cond)
		}
	}
	if get(tm, "read_only") != true {
		t.Error("tidemark: read_only should be true")
	}
	ports := anyStrings(list(tm, "ports"))
	if len(ports) != 1 || !strings.HasSuffix(ports[0], ":"+adminPort) || !strings.HasPrefix(ports[0], "127.0.0.1:") {
		t.Errorf("tidemark ports %v: want the admin port on 127.0.0.1 only", ports)
	}
	// Files mounted as configs, volumes and secrets.
	targets := map[string]string{} // container path → source in the repo
	for name, s := range services {
		for _, v := range anyStrings(list(s, "volumes")) {
			src, dst, _ := strings.Cut(v, ":")
			dst, _, _ = strings.Cut(dst, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
					t.Errorf("%s: volume source %s: %v", name, src, err)
				}
			}
			targets[name+":"+dst] = src
		}
		for _, cf := range list(s, "configs") {
			src := str(c, "configs", str(cf, "source"), "file")
			if src == "" {
				t.Errorf("%s: config %v is not defined at the top level", name, cf)
				continue
			}
			if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
				t.Errorf("%s: config file %s: %v", name, src, err)
			}
			targets[name+":"+str(cf, "target")] = src
		}
		for _, sec := range anyStrings(list(s, "secrets")) {
			if str(c, "secrets", sec, "file") == "" {
				t.Errorf("%s: secret %s is not defined at the top level", name, sec)
			}
			targets[name+":/run/secrets/"+sec] = str(c, "secrets", sec, "file")
		}
	}
	// The daemon config names files that must be mounted where it looks.
	cfg := yamlMap(t, "compose/tidemark.yaml")
	for _, p := range []string{str(cfg, "spec"), str(cfg, "admin", "tokens_file"), str(cfg, "admin", "tls_cert"), str(cfg, "admin", "tls_key")} {
		if _, ok := targets["tidemark:"+p]; !ok {
			t.Errorf("compose/tidemark.yaml names %q, which the tidemark service does not mount", p)
		}
	}
	// TLS: the daemon serves make-secrets' certificate and key, and every
	// client of the admin API (the CLI in the container, Prometheus) verifies
	// it against make-secrets' CA.
	for key, want := range map[string]string{"tls_cert": "./secrets/tidemark.pem", "tls_key": "./secrets/tidemark-key.pem"} {
		if got := targets["tidemark:"+str(cfg, "admin", key)]; got != want {
			t.Errorf("admin.%s is mounted from %q, want make-secrets' %s", key, got, want)
		}
	}
	tenv, _ := get(tm, "environment").(map[string]any)
	if a, _ := tenv["TIDEMARK_ADDR"].(string); !strings.HasPrefix(a, "https://") {
		t.Errorf("tidemark: TIDEMARK_ADDR %q: the CLI in the container must use https", a)
	}
	if ca, _ := tenv["TIDEMARK_CA_FILE"].(string); targets["tidemark:"+ca] != "./secrets/ca.pem" {
		t.Errorf("tidemark: TIDEMARK_CA_FILE %q is not make-secrets' ca.pem mounted in the container", ca)
	}
	if targets["tidemark:"+str(cfg, "spec")] != "../../examples/specs/users.yaml" {
		t.Errorf("the compose spec should be examples/specs/users.yaml, is %s", targets["tidemark:"+str(cfg, "spec")])
	}
	if !strings.HasPrefix(str(cfg, "reconcile", "report_dir"), "/var/lib/tidemark") {
		t.Errorf("reconcile.report_dir %q: the root file system is read-only; use the volume at /var/lib/tidemark", str(cfg, "reconcile", "report_dir"))
	}
	// Prometheus and Grafana read what we ship.
	prom := yamlMap(t, "prometheus/prometheus.yml")
	for _, rf := range anyStrings(list(prom, "rule_files")) {
		if targets["prometheus:"+rf] != "../prometheus/alerts.yml" {
			t.Errorf("prometheus.yml loads %s, which is not alerts.yml in the container", rf)
		}
	}
	job := get(prom, "scrape_configs", "0")
	if cf := str(job, "authorization", "credentials_file"); targets["prometheus:"+cf] == "" {
		t.Errorf("prometheus scrapes with credentials_file %q, which is not mounted", cf)
	}
	if tg := anyStrings(list(job, "static_configs", "0", "targets")); len(tg) != 1 || tg[0] != "tidemark:"+adminPort {
		t.Errorf("prometheus targets %v, want tidemark:%s", tg, adminPort)
	}
	if str(job, "scheme") != "https" {
		t.Errorf("prometheus scrapes with scheme %q; the admin API serves https only", str(job, "scheme"))
	}
	if ca := str(job, "tls_config", "ca_file"); targets["prometheus:"+ca] != "./secrets/ca.pem" {
		t.Errorf("prometheus tls_config.ca_file %q is not make-secrets' ca.pem mounted in the container", ca)
	}
	if get(job, "tls_config", "insecure_skip_verify") == true {
		t.Error("prometheus must verify tidemark's certificate, not skip it")
	}
	prov := yamlMap(t, "grafana/provisioning/dashboards/tidemark.yaml")
	if dir := str(prov, "providers", "0", "options", "path"); targets["grafana:"+dir] != "../grafana/dashboards" {
		t.Errorf("grafana dashboards provider reads %s, which is not deploy/grafana/dashboards in the container", dir)
	}
	ds := yamlMap(t, "grafana/provisioning/datasources/prometheus.yaml")
	if u := str(ds, "datasources", "0", "url"); u != "http://prometheus:9090" {
		t.Errorf("grafana datasource url %q", u)
	}
}

func anyStrings(l []any) []string {
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// TestMakeSecrets runs the script that makes the compose secrets and checks
// the daemon accepts the tokens file, that Prometheus' token is one of its
// tokens, that every secret compose mounts is made, and that a second run
// keeps them.
func TestMakeSecrets(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "secrets")
	run := func() {
		out, err := exec.Command("sh", "compose/make-secrets", dir).CombinedOutput()
		if err != nil {
			t.Fatalf("make-secrets: %v\n%s", err, out)
		}
	}
	run()
	tokens, err := admin.LoadTokens(filepath.Join(dir, "tokens"))
	if err != nil {
		t.Fatalf("the daemon refuses the tokens file: %v", err)
	}
	for file, name := range map[string]string{"prometheus-token": "prometheus", "operator-token": "operator"} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if tokens[strings.TrimSpace(string(b))] != name {
			t.Errorf("%s does not hold the %s token of the tokens file", file, name)
		}
	}
	c := yamlMap(t, "compose/docker-compose.yaml")
	secrets, _ := c["secrets"].(map[string]any)
	for name := range secrets {
		f := str(secrets, name, "file")
		if !strings.HasPrefix(f, "./secrets/") {
			t.Errorf("secret %s: file %s is not made by make-secrets", name, f)
			continue
		}
		st, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(f, "./secrets/")))
		if err != nil {
			t.Errorf("secret %s: %v", name, err)
			continue
		}
		// Compose bind-mounts the file as it is; the containers' non-root users must read it.
		if st.Mode().Perm()&0o004 == 0 {
			t.Errorf("secret %s: mode %v is not readable by the containers' users", name, st.Mode())
		}
	}
	checkGeneratedCert(t, dir)
	if st, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("ca-key.pem: %v %v: the CA key is mounted nowhere and must be owner-only", st.Mode(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("secrets directory: %v %v, want mode 0700", st.Mode(), err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "tokens"))
	beforeCert, _ := os.ReadFile(filepath.Join(dir, "tidemark.pem"))
	run()
	after, _ := os.ReadFile(filepath.Join(dir, "tokens"))
	if !bytes.Equal(before, after) {
		t.Error("a second run changed the tokens")
	}
	if afterCert, _ := os.ReadFile(filepath.Join(dir, "tidemark.pem")); !bytes.Equal(beforeCert, afterCert) {
		t.Error("a second run changed the certificate")
	}
	// A directory made before the certificates existed gets them, and keeps its tokens.
	for _, f := range []string{"ca.pem", "ca-key.pem", "tidemark.pem", "tidemark-key.pem"} {
		os.Remove(filepath.Join(dir, f))
	}
	run()
	if again, _ := os.ReadFile(filepath.Join(dir, "tokens")); !bytes.Equal(before, again) {
		t.Error("adding the certificates changed the tokens")
	}
	checkGeneratedCert(t, dir)
	ignore, err := os.ReadFile("compose/.gitignore")
	if err != nil || !strings.Contains(string(ignore), "/secrets/") {
		t.Errorf("compose/.gitignore must keep secrets/ out of git (%v)", err)
	}
}

// tlsNames are the names make-secrets' certificate must hold: the Compose
// service, the Kubernetes Service's forms (kubernetes-scrape.yml verifies
// against tidemark.tidemark.svc) and the loopback names the CLI uses.
var tlsNames = []string{"tidemark", "tidemark.tidemark.svc", "tidemark.tidemark.svc.cluster.local", "localhost", "127.0.0.1"}

// checkGeneratedCert checks make-secrets' TLS files: the key pair loads, the
// server certificate verifies against ca.pem for every name of tlsNames and
// for server authentication, and the files the containers mount are readable.
func checkGeneratedCert(t *testing.T, dir string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tidemark.pem"), filepath.Join(dir, "tidemark-key.pem"))
	if err != nil {
		t.Fatalf("make-secrets' certificate and key do not load as a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	for _, name := range tlsNames {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("the certificate does not verify for %s against ca.pem: %v", name, err)
		}
	}
	if leaf.IsCA {
		t.Error("the server certificate is a CA")
	}
	for _, f := range []string{"ca.pem", "tidemark.pem", "tidemark-key.pem"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm()&0o004 == 0 {
			t.Errorf("%s: %v %v: the containers' users must read it", f, st.Mode(), err)
		}
	}
}

// k8sObject is the part of a manifest the checks read.
type k8sObject struct {
	path string
	raw  map[string]any
}

func (o k8sObject) kind() string { return str(o.raw, "kind") }
func (o k8sObject) name() string { return str(o.raw, "metadata", "name") }

func loadK8s(t *testing.T) []k8sObject {
	t.Helper()
	var out []k8sObject
	kust := yamlMap(t, "kubernetes/kustomization.yaml")
	listed := map[string]bool{}
	for _, r := range anyStrings(list(kust, "resources")) {
		listed[r] = true
	}
	entries, err := os.ReadDir("kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		if n == "kustomization.yaml" || !strings.HasSuffix(n, ".yaml") {
			continue
		}
		example := strings.HasSuffix(n, ".example.yaml")
		if !listed[n] && !example {
			t.Errorf("kubernetes/%s is not in kustomization.yaml resources", n)
		}
		if listed[n] && example {
			t.Errorf("kubernetes/%s is an example and must not be applied", n)
		}
		delete(listed, n)
		for _, d := range yamlDocs(t, filepath.Join("kubernetes", n)) {
			var m map[string]any
			if err := d.Decode(&m); err != nil {
				t.Fatalf("kubernetes/%s: %v", n, err)
			}
			if str(m, "apiVersion") == "" || str(m, "kind") == "" || str(m, "metadata", "name") == "" {
				t.Errorf("kubernetes/%s: apiVersion, kind and metadata.name are required", n)
			}
			out = append(out, k8sObject{path: n, raw: m})
		}
	}
	for r := range listed {
		t.Errorf("kustomization.yaml lists %s, which does not exist", r)
	}
	return out
}

// TestKubernetes checks the manifests for what an operator relies on: probes
// on /healthz and /readyz, requests and limits, non-root read-only pods, a
// single capture replica, a PDB and a Service that select the right pods, and
// mounts that match the config's paths and the Secret's keys.
func TestKubernetes(t *testing.T) {
	objs := loadK8s(t)
	byKind := map[string][]k8sObject{}
	for _, o := range objs {
		byKind[o.kind()] = append(byKind[o.kind()], o)
		if o.kind() != "Namespace" && str(o.raw, "metadata", "namespace") != "tidemark" {
			t.Errorf("%s %s: namespace %q, want tidemark", o.kind(), o.name(), str(o.raw, "metadata", "namespace"))
		}
	}
	for kind, n := range map[string]int{"Namespace": 1, "ServiceAccount": 1, "ConfigMap": 1, "Secret": 2, "Deployment": 2, "Service": 1, "PodDisruptionBudget": 1} {
		if len(byKind[kind]) != n {
			t.Errorf("%d %s objects, want %d", len(byKind[kind]), kind, n)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	cm := byKind["ConfigMap"][0]
	cmData, _ := get(cm.raw, "data").(map[string]any)
	secrets := map[string]map[string]bool{} // Secret name → its keys
	byName := map[string]k8sObject{}
	for _, sec := range byKind["Secret"] {
		byName[sec.name()] = sec
		secrets[sec.name()] = map[string]bool{}
		for k := range get(sec.raw, "stringData").(map[string]any) {
			secrets[sec.name()][k] = true
		}
	}
	secret, tlsSecret := byName["tidemark-secrets"], byName["tidemark-tls"]
	if secret.raw == nil || tlsSecret.raw == nil {
		t.Fatalf("want Secrets tidemark-secrets and tidemark-tls, got %v", reflect.ValueOf(byName).MapKeys())
	}
	if str(tlsSecret.raw, "type") != "kubernetes.io/tls" {
		t.Errorf("Secret tidemark-tls: type %q, want kubernetes.io/tls", str(tlsSecret.raw, "type"))
	}
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if !strings.Contains(str(tlsSecret.raw, "stringData", k), "REPLACE") {
			t.Errorf("tls-secret.example.yaml %s must be a placeholder", k)
		}
	}

	deps := map[string]k8sObject{}
	for _, d := range byKind["Deployment"] {
		role := str(d.raw, "spec", "template", "metadata", "labels", "app.kubernetes.io/component")
		deps[role] = d
		checkDeployment(t, d, cmData, secrets)
	}
	capture, sink := deps["capture"], deps["sink"]
	if capture.raw == nil || sink.raw == nil {
		t.Fatalf("want a capture and a sink Deployment (app.kubernetes.io/component), got %v", reflect.ValueOf(deps).MapKeys())
	}
	// One capture process per stream: a second one fences the first.
	if r, _ := get(capture.raw, "spec", "replicas").(int); r != 1 {
		t.Errorf("capture replicas %v, want 1", get(capture.raw, "spec", "replicas"))
	}
	if str(capture.raw, "spec", "strategy", "type") != "Recreate" {
		t.Error("capture strategy should be Recreate (the old pod stops before the new one starts)")
	}
	if r, _ := get(sink.raw, "spec", "replicas").(int); r < 2 {
		t.Errorf("sink replicas %v: want at least 2, so the PDB lets a drain through", get(sink.raw, "spec", "replicas"))
	}
	// The PDB selects the sink pods; the Service selects all tidemark pods on the admin port.
	pdb := byKind["PodDisruptionBudget"][0]
	if !selects(get(pdb.raw, "spec", "selector", "matchLabels"), sink) || selects(get(pdb.raw, "spec", "selector", "matchLabels"), capture) {
		t.Error("the PodDisruptionBudget must select the sink pods only")
	}
	if get(pdb.raw, "spec", "maxUnavailable") == nil && get(pdb.raw, "spec", "minAvailable") == nil {
		t.Error("the PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
	}
	svc := byKind["Service"][0]
	// Prometheus in the cluster scrapes the pods over https, verifying their
	// certificate (which names the Service, not pod IPs) against the CA.
	scrape := yamlMap(t, "prometheus/kubernetes-scrape.yml")
	job := get(scrape, "scrape_configs", "0")
	if str(job, "scheme") != "https" || str(job, "tls_config", "ca_file") == "" || get(job, "tls_config", "insecure_skip_verify") == true {
		t.Errorf("kubernetes-scrape.yml: scheme %q, tls_config %v: want https verified against a CA file", str(job, "scheme"), get(job, "tls_config"))
	}
	if sn := str(job, "tls_config", "server_name"); !slices.Contains(tlsNames, sn) {
		t.Errorf("kubernetes-scrape.yml: tls_config.server_name %q is not a name make-secrets' certificate holds (%v)", sn, tlsNames)
	}
	if !selects(get(svc.raw, "spec", "selector"), sink) || !selects(get(svc.raw, "spec", "selector"), capture) {
		t.Error("the Service must select the capture and the sink pods")
	}
	if tp := str(svc.raw, "spec", "ports", "0", "targetPort"); tp != "admin" {
		t.Errorf("Service targetPort %q, want the container port named admin", tp)
	}
	if str(svc.raw, "spec", "type") != "ClusterIP" {
		t.Errorf("Service type %q: keep the admin API inside the cluster", str(svc.raw, "spec", "type"))
	}
	// The two configs differ only in roles; every pod schedules rounds and
	// the election lets only the leader run them.
	capCfg, sinkCfg := daemonConfig(t, cmData, "tidemark-capture.yaml"), daemonConfig(t, cmData, "tidemark-sink.yaml")
	if r := anyStrings(list(capCfg, "roles")); !reflect.DeepEqual(r, []string{"capture"}) {
		t.Errorf("tidemark-capture.yaml roles %v", r)
	}
	if r := anyStrings(list(sinkCfg, "roles")); !reflect.DeepEqual(r, []string{"sink"}) {
		t.Errorf("tidemark-sink.yaml roles %v", r)
	}
	if iv := str(sinkCfg, "reconcile", "interval"); iv != "0s" && get(sinkCfg, "election", "enabled") != true {
		t.Errorf("tidemark-sink.yaml schedules reconcile rounds (interval %q) in every sink replica without an election", iv)
	}
	delete(capCfg, "roles")
	delete(sinkCfg, "roles")
	if !reflect.DeepEqual(capCfg, sinkCfg) {
		t.Error("tidemark-capture.yaml and tidemark-sink.yaml differ in more than roles")
	}
	// The spec in the ConfigMap compiles and is the example's.
	spec, _ := cmData["users.yaml"].(string)
	if _, err := transform.Parse([]byte(spec)); err != nil {
		t.Errorf("the ConfigMap's users.yaml does not compile: %v", err)
	}
	if ex, _ := os.ReadFile("../examples/specs/users.yaml"); string(ex) != spec {
		t.Error("the ConfigMap's users.yaml differs from examples/specs/users.yaml; keep them equal (or change this test when shipping another spec)")
	}
	// Tokens in the example Secret are placeholders the daemon would refuse to
	// take for real ones only if they were short: make sure they say REPLACE.
	if !strings.Contains(str(secret.raw, "stringData", "tokens"), "REPLACE") {
		t.Error("secret.example.yaml must hold placeholders, not usable tokens")
	}
}

func selects(selector any, d k8sObject) bool {
	sel, _ := selector.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	labels, _ := get(d.raw, "spec", "template", "metadata", "labels").(map[string]any)
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkDeployment(t *testing.T, d k8sObject, cmData map[string]any, secrets map[string]map[string]bool) {
	t.Helper()
	name := d.name()
	pod := get(d.raw, "spec", "template", "spec")
	if !selects(get(d.raw, "spec", "selector", "matchLabels"), d) {
		t.Errorf("%s: selector does not match its pod labels", name)
	}
	if get(pod, "securityContext", "runAsNonRoot") != true {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", name)
	}
	if uid, _ := get(pod, "securityContext", "runAsUser").(int); uid == 0 {
		t.Errorf("%s: runAsUser must be a non-zero uid", name)
	}
	if get(pod, "automountServiceAccountToken") != false {
		t.Errorf("%s: automountServiceAccountToken should be false (tidemark does not call the API server)", name)
	}
	volumes := map[string]any{}
	for _, v := range list(pod, "volumes") {
		volumes[str(v, "name")] = v
	}
	containers := list(pod, "containers")
	if len(containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", name, len(containers))
	}
	c := containers[0]
	sc := get(c, "securityContext")
	if get(sc, "readOnlyRootFilesystem") != true || get(sc, "allowPrivilegeEscalation") != false {
		t.Errorf("%s: container needs readOnlyRootFilesystem true and allowPrivilegeEscalation false", name)
	}
	if caps := anyStrings(list(sc, "capabilities", "drop")); !reflect.DeepEqual(caps, []string{"ALL"}) {
		t.Errorf("%s: capabilities.drop %v, want [ALL]", name, caps)
	}
	for _, kind := range []string{"requests", "limits"} {
		for _, res := range []string{"cpu", "memory"} {
			if get(c, "resources", kind, res) == nil {
				t.Errorf("%s: resources.%s.%s is not set", name, kind, res)
			}
		}
	}
	if str(c, "ports", "0", "name") != "admin" || get(c, "ports", "0", "containerPort") != 7070 {
		t.Errorf("%s: container port should be admin: %s", name, adminPort)
	}
	for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if p := str(c, probe, "httpGet", "path"); p != want {
			t.Errorf("%s: %s path %q, want %s", name, probe, p, want)
		}
		if port := str(c, probe, "httpGet", "port"); port != "admin" {
			t.Errorf("%s: %s port %q, want admin", name, probe, port)
		}
		if sch := str(c, probe, "httpGet", "scheme"); sch != "HTTPS" {
			t.Errorf("%s: %s scheme %q, want HTTPS (the admin port serves TLS only)", name, probe, sch)
		}
	}
	if sch := str(d.raw, "spec", "template", "metadata", "annotations", "prometheus.io/scheme"); sch != "https" {
		t.Errorf("%s: annotation prometheus.io/scheme %q, want https", name, sch)
	}
	// Mounts: every volume exists, ConfigMap subPaths are keys, the root
	// file system being read-only, /var/lib/tidemark must be writable.
	mounts := map[string]any{} // mountPath → mount
	for _, m := range list(c, "volumeMounts") {
		v := volumes[str(m, "name")]
		if v == nil {
			t.Errorf("%s: mount of undefined volume %s", name, str(m, "name"))
			continue
		}
		mounts[str(m, "mountPath")] = m
		if get(v, "configMap") != nil && str(m, "subPath") != "" {
			if _, ok := cmData[str(m, "subPath")]; !ok {
				t.Errorf("%s: subPath %s is not a key of the ConfigMap", name, str(m, "subPath"))
			}
		}
		if get(v, "secret") != nil && secrets[str(v, "secret", "secretName")] == nil {
			t.Errorf("%s: secret volume names %s, which is none of the Secrets shipped", name, str(v, "secret", "secretName"))
		}
	}
	if m := mounts["/var/lib/tidemark"]; m == nil || get(volumes[str(m, "name")], "emptyDir") == nil {
		t.Errorf("%s: /var/lib/tidemark needs a writable emptyDir (read-only root file system)", name)
	}
	// The config the container runs with: its paths resolve to mounts.
	args := anyStrings(list(c, "args"))
	cfgPath := ""
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			cfgPath = args[i+1]
		}
	}
	m := mounts[cfgPath]
	if m == nil {
		t.Fatalf("%s: --config %s is not mounted", name, cfgPath)
	}
	cfg := daemonConfig(t, cmData, str(m, "subPath"))
	if p := str(cfg, "spec"); mounts[p] == nil || str(mounts[p], "subPath") == "" {
		t.Errorf("%s: spec %s is not mounted from the ConfigMap", name, p)
	}
	for p, secretName := range map[string]string{
		str(cfg, "admin", "tokens_file"): "tidemark-secrets",
		str(cfg, "mongo", "uri_file"):    "tidemark-secrets",
		str(cfg, "admin", "tls_cert"):    "tidemark-tls",
		str(cfg, "admin", "tls_key"):     "tidemark-tls",
	} {
		dir, key := path.Split(p)
		sm := mounts[strings.TrimSuffix(dir, "/")]
		if sm == nil || str(volumes[str(sm, "name")], "secret", "secretName") != secretName || !secrets[secretName][key] {
			t.Errorf("%s: %q is not a key of the mounted Secret %s", name, p, secretName)
		}
	}
	if !strings.HasPrefix(str(cfg, "reconcile", "report_dir"), "/var/lib/tidemark") {
		t.Errorf("%s: reconcile.report_dir must be under the writable /var/lib/tidemark", name)
	}
}

func daemonConfig(t *testing.T, cmData map[string]any, key string) map[string]any {
	t.Helper()
	s, _ := cmData[key].(string)
	var m map[string]any
	if err := yaml.Unmarshal([]byte(s), &m); err != nil || m == nil {
		t.Fatalf("ConfigMap key %s: %v", key, err)
	}
	return m
}

// TestDaemonConfigKeys checks every daemon config we ship against the yaml
// tags of the daemon's Config structs: the daemon refuses unknown keys at
// start-up, which no one would see until a container crash-looped. It also
// checks the choices a container needs: the admin API on all interfaces at
// the exposed port, TLS on it, and checkpoints in Kafka (a file store dies
// with the pod).
func TestDaemonConfigKeys(t *testing.T) {
	tree := loadConfigTree(t)
	configs := map[string][]byte{}
	if b, err := os.ReadFile("compose/tidemark.yaml"); err == nil {
		configs["compose/tidemark.yaml"] = b
	} else {
		t.Fatal(err)
	}
	for _, o := range loadK8s(t) {
		if o.kind() != "ConfigMap" {
			continue
		}
		for k, v := range get(o.raw, "data").(map[string]any) {
			if strings.HasPrefix(k, "tidemark-") {
				configs["kubernetes/"+o.path+":"+k] = []byte(v.(string))
			}
		}
	}
	if len(configs) != 3 {
		t.Errorf("found %d daemon configs, want 3", len(configs))
	}
	for where, b := range configs {
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		for _, k := range unknownKeys(tree, doc.Content[0], "") {
			t.Errorf("%s: key %s is not in the daemon's Config (it would refuse to start)", where, k)
		}
		var cfg map[string]any
		yaml.Unmarshal(b, &cfg)
		host, port, err := net.SplitHostPort(str(cfg, "admin", "listen"))
		if err != nil || port != adminPort || (host != "0.0.0.0" && host != "" && host != "::") {
			t.Errorf("%s: admin.listen %q, want all interfaces on port %s", where, str(cfg, "admin", "listen"), adminPort)
		}
		if str(cfg, "checkpoints", "kind") != "kafka" || str(cfg, "checkpoints", "topic") == "" {
			t.Errorf("%s: checkpoints must be kind kafka with a topic: a file store would not survive the container", where)
		}
		if str(cfg, "admin", "tls_cert") == "" || str(cfg, "admin", "tls_key") == "" {
			t.Errorf("%s: admin.tls_cert and admin.tls_key must be set: the admin API carries bearer tokens", where)
		}
		if strings.Contains(str(cfg, "mongo", "uri"), "@") {
			t.Errorf("%s: credentials in mongo.uri", where)
		}
	}
}

// keyNode builds the YAML mapping "a: {b: x}" for the dotted key "a.b".
func keyNode(dotted string) *yaml.Node {
	parts := strings.Split(dotted, ".")
	n := &yaml.Node{Kind: yaml.ScalarNode, Value: "x"}
	for i := len(parts) - 1; i >= 0; i-- {
		n = &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: parts[i]}, n}}
	}
	return n
}

// unknownKeys lists the dotted keys of n that tree does not accept.
func unknownKeys(tree *configTree, n *yaml.Node, prefix string) []string {
	if tree == nil || tree.anyKey {
		return nil
	}
	var out []string
	switch n.Kind {
	case yaml.MappingNode:
		if tree.fields == nil {
			return []string{strings.TrimSuffix(prefix, ".") + " (not a section)"}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			sub, ok := tree.fields[k]
			if !ok {
				out = append(out, prefix+k)
				continue
			}
			out = append(out, unknownKeys(sub, n.Content[i+1], prefix+k+".")...)
		}
	case yaml.SequenceNode:
		if tree.elem != nil {
			for _, c := range n.Content {
				out = append(out, unknownKeys(tree.elem, c, prefix)...)
			}
		}
	}
	return out
}

// TestConfigTree guards the reader of the Config structs: if it stopped
// seeing the sections, TestDaemonConfigKeys would accept anything.
func TestConfigTree(t *testing.T) {
	tree := loadConfigTree(t)
	for _, k := range []string{"admin.listen", "kafka.sasl.mechanism", "capture.backfill.chunk_size", "sink.throttle.p99", "checkpoints.kind", "reconcile.interval"} {
		if bad := unknownKeys(tree, keyNode(k), ""); len(bad) > 0 {
			t.Errorf("%s not found in the daemon's Config", k)
		}
	}
	for _, k := range []string{"admin.lisen", "sink.throttle.p98", "nosuch"} {
		if bad := unknownKeys(tree, keyNode(k), ""); len(bad) != 1 {
			t.Errorf("%s accepted", k)
		}
	}
}
