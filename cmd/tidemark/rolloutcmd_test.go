package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.yaml.in/yaml/v3"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
	"github.com/tidemarkhq/tidemark/daemon"
	"github.com/tidemarkhq/tidemark/envelope"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/rollout/rollouttest"
)

const unitToken = "unit-token-0123456789abcdef"

type planFixture struct {
	url   string
	token string
	store *checkpointstest.Memory
	e     *rollout.Engine
	act   *rollouttest.Actions
}

func newPlanFixture(t *testing.T) *planFixture {
	t.Helper()
	var cfg rollout.Config
	err := yaml.Unmarshal([]byte(`
version: v1
stages:
  - name: canary
    slice: {collections: [app.users], share: 5%}
    reads: new
    gates: [{name: lag, signal: lag_seconds, max: 5, window: 10m}]
    triggers: [{name: lag-halt, signal: lag_seconds, above: 60, for: 1m, action: halt}]
  - name: all
    slice: {collections: [app.users]}
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.WithDefaults()
	cfg.DrillTimeout = 5 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	store := checkpointstest.New()
	clock := rollouttest.NewClock(time.Now())
	act := &rollouttest.Actions{}
	log := slog.New(slog.DiscardHandler)
	e, err := rollout.NewEngine(cfg, rollout.Deps{Store: store, Signals: &rollouttest.Signals{Clock: clock}, Actions: act, Logger: log}, rollout.WithPoll(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := admin.NewServer(admin.Tokens{unitToken: "carol"}, store, false, log)
	daemon.MountPlan(srv, e)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte(unitToken), 0o600)
	return &planFixture{url: ts.URL, token: tok, store: store, e: e, act: act}
}

func (f *planFixture) cli(args ...string) (string, int) {
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), append(args, "--addr", f.url, "--token-file", f.token), &out, &errb)
	return out.String() + errb.String(), code
}

func TestRouteEndpointAnswersByBucket(t *testing.T) {
	f := newPlanFixture(t)
	cl, _ := admin.NewClient(f.url, f.token)
	for _, tc := range []struct {
		id  string
		val any
	}{{"42", int64(42)}, {`"user-7"`, "user-7"}, {"user-7", "user-7"}, {`{"$oid":"5f1d7a3b9c1e4a2b3c4d5e6f"}`, nil}} {
		var got daemon.RouteAnswer
		if err := cl.Do(context.Background(), "GET", "/v1/route?collection=app.users&id="+urlq(tc.id), nil, &got); err != nil {
			t.Fatal(err)
		}
		if tc.val != nil {
			typ, b, _ := bson.MarshalValue(tc.val)
			key := envelope.Key(bson.RawValue{Type: typ, Value: b})
			if got.Bucket != rollout.Bucket(key) {
				t.Errorf("%s: bucket %d, want %d", tc.id, got.Bucket, rollout.Bucket(key))
			}
		}
		want := rollout.Legacy
		if got.Bucket < 500 {
			want = rollout.New
		}
		if got.Route != want || got.Stage != "canary" || got.Generation != 1 {
			t.Errorf("%s: %+v, want %s", tc.id, got, want)
		}
	}
	var other daemon.RouteAnswer
	cl.Do(context.Background(), "GET", "/v1/route?collection=app.orders&id=1", nil, &other)
	if other.Route != rollout.Legacy {
		t.Errorf("a collection outside the plan routes %s", other.Route)
	}
	err := cl.Do(context.Background(), "GET", "/v1/route?collection=app.users&id=%7Bbad", nil, nil)
	if he, ok := err.(*admin.HTTPError); !ok || he.Code != 400 {
		t.Errorf("malformed id: %v", err)
	}
}

func urlq(s string) string {
	r := strings.NewReplacer(`"`, "%22", "{", "%7B", "}", "%7D", "$", "%24", ":", "%3A")
	return r.Replace(s)
}

func TestPlanCLI(t *testing.T) {
	f := newPlanFixture(t)
	out, code := f.cli("plan", "status")
	if code != 0 || !strings.Contains(out, "stage 1/2 canary") || !strings.Contains(out, "app.users 5%") ||
		!regexpLine(out, `lag\s+lag_seconds\s+pending\s+-\s+<= 5`) || !regexpLine(out, `lag-halt\s+lag_seconds\s+halt`) {
		t.Fatalf("status (%d):\n%s", code, out)
	}
	out, code = f.cli("plan", "drill", "--trigger", "lag-halt", "--reason", "monthly drill")
	if code != 0 || !strings.Contains(out, "PASS") || !strings.Contains(out, "verify effect") {
		t.Fatalf("drill (%d): %s", code, out)
	}
	if out, code := f.cli("plan", "advance"); code != 2 || !strings.Contains(out, "--reason is required") {
		t.Fatalf("advance without reason (%d): %s", code, out)
	}
	if out, code := f.cli("plan", "advance", "--reason", "go"); code != 1 || !strings.Contains(out, "409") || !strings.Contains(out, "lag is pending") {
		t.Fatalf("advance with a pending gate (%d): %s", code, out)
	}
	if out, code := f.cli("plan", "advance", "--reason", "go", "--force"); code != 0 || !strings.Contains(out, "stage 2/2 all") {
		t.Fatalf("forced advance (%d): %s", code, out)
	}
	if out, code := f.cli("plan", "drill", "--trigger", "nope", "--reason", "x"); code != 1 || !strings.Contains(out, "404") {
		t.Fatalf("unknown trigger (%d): %s", code, out)
	}
	out, code = f.cli("plan", "rollback", "--reason", "bad reads", "--json")
	var st rollout.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.SoftRollback {
		t.Fatalf("rollback (%d): %s", code, out)
	}
	es, _ := f.store.Audit(context.Background(), checkpoints.AuditFilter{Actor: "carol"})
	var actions []string
	for _, e := range es {
		actions = append(actions, e.Action+"="+strings.SplitN(e.Result, ":", 2)[0])
	}
	want := "POST /v1/plan/advance=failed POST /v1/plan/advance=ok stage.advance=ok drill=ok POST /v1/plan/drill=ok POST /v1/plan/drill=failed rollback=ok POST /v1/plan/rollback=ok" +
		" POST /v1/plan/advance=started POST /v1/plan/advance=started POST /v1/plan/drill=started POST /v1/plan/drill=started POST /v1/plan/rollback=started"
	// The admin server audits each request as started, then its result; the
	// engine audits what it did.
	if got := strings.Join(actions, " "); !sameSet(got, want) {
		t.Fatalf("audit by carol:\n got %s\nwant %s", got, want)
	}
}

func regexpLine(s, re string) bool {
	for _, l := range strings.Split(s, "\n") {
		if regexp.MustCompile(re).MatchString(l) {
			return true
		}
	}
	return false
}

func sameSet(a, b string) bool {
	count := map[string]int{}
	for _, x := range strings.Fields(a) {
		count[x]++
	}
	for _, x := range strings.Fields(b) {
		count[x]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
