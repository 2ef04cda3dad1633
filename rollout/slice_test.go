package rollout_test

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.yaml.in/yaml/v3"

	"github.com/tidemarkhq/tidemark/rollout"
)

func rawValue(t *testing.T, v any) bson.RawValue {
	t.Helper()
	typ, b, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: b}
}

// The buckets are part of the contract with applications that route from the
// route file: they must never change between versions, processes or machines.
func TestBucketIsStable(t *testing.T) {
	for _, tc := range []struct {
		id   any
		want int
	}{{int32(1), 1861}, {int64(1), 1861}, {1.0, 1861}, {int64(42), 5870}, {"user-7", 6018}, {1.5, 1584}} {
		if got := rollout.BucketOfID(rawValue(t, tc.id)); got != tc.want {
			t.Errorf("bucket of %#v = %d, want %d", tc.id, got, tc.want)
		}
	}
}

func TestWideningOnlyAddsKeys(t *testing.T) {
	shares := []int{1, 100, 1000, 5000, 10000}
	counts := make([]int, len(shares))
	r := rand.New(rand.NewPCG(1, 2))
	const n = 100_000
	key := make([]byte, 9)
	key[0] = 0x12
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint64(key[1:], r.Uint64())
		in := false
		for j, bp := range shares {
			now := rollout.Slice{"a.b": bp}.Contains("a.b", key)
			if in && !now {
				t.Fatalf("key %x is in %d bp but not in %d bp", key, shares[j-1], bp)
			}
			if now {
				counts[j]++
			}
			in = now
		}
	}
	// The hash spreads keys evenly: each share holds its part within 15%.
	for j, bp := range shares[1:] {
		want := float64(n) * float64(bp) / 10000
		if got := float64(counts[j+1]); got < want*0.85 || got > want*1.15 {
			t.Errorf("%d bp holds %.0f of %d keys, want about %.0f", bp, got, n, want)
		}
	}
	if !(rollout.Slice{"a.b": 10000}).Contains("a.b", []byte("x")) || (rollout.Slice{"a.b": 10000}).Contains("c.d", []byte("x")) {
		t.Fatal("100% holds every key of its collections and none of others")
	}
}

func TestShareParsing(t *testing.T) {
	for in, want := range map[string]rollout.Share{"1%": 100, "12.5%": 1250, "100%": 10000, "0.01%": 1, "50": 5000} {
		var s rollout.Share
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("%q: %v %v", in, s, err)
		}
		if b, _ := s.MarshalText(); in != "50" && string(b) != in {
			t.Errorf("%q marshals as %s", in, b)
		}
	}
	for _, in := range []string{"101%", "-1%", "0.001%", "abc", "NaN", "0%", "-0"} {
		var s rollout.Share
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %v", in, s)
		}
	}
}

func TestPlanValidation(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"no version", `stages: [{name: a, slice: {collections: [d.c]}}]`, "version: required"},
		{"narrowing", `version: v
stages:
  - {name: a, slice: {collections: [d.c], share: 10%}}
  - {name: b, slice: {collections: [d.c], share: 1%}}`, "must widen the previous one: d.c goes from 10% to 1%"},
		{"dropping a collection", `version: v
stages:
  - {name: a, slice: {collections: [d.c, d.e]}}
  - {name: b, slice: {collections: [d.c]}}`, "d.e goes from 100% to 0%"},
		{"unknown signal", `version: v
stages: [{name: a, slice: {collections: [d.c]}, gates: [{name: g, signal: vibes, max: 1}]}]`, `unknown signal "vibes"`},
		{"gate without bound", `version: v
stages: [{name: a, slice: {collections: [d.c]}, gates: [{name: g, signal: lag_seconds}]}]`, "give max and/or min"},
		{"bad action", `version: v
stages: [{name: a, slice: {collections: [d.c]}, triggers: [{name: t, signal: lag_seconds, above: 1, action: panic}]}]`, `action "panic"`},
		{"duplicate trigger", `version: v
triggers: [{name: t, signal: lag_seconds, above: 1, action: halt}]
stages: [{name: a, slice: {collections: [d.c]}, triggers: [{name: t, signal: lag_seconds, above: 1, action: halt}]}]`, `trigger name "t" used twice`},
		{"not a namespace", `version: v
stages: [{name: a, slice: {collections: [users]}}]`, `"users" is not db.collection`},
		{"bad reads", `version: v
stages: [{name: a, slice: {collections: [d.c]}, reads: both}]`, `reads "both"`},
		{"bad share", `version: v
stages: [{name: a, slice: {collections: [d.c], share: 200%}}]`, "share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c rollout.Config
			err := yaml.Unmarshal([]byte(tc.yaml), &c)
			if err == nil {
				err = c.WithDefaults().Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	c := plan(t, planYAML)
	if c.Stages[0].Slice.Share != 100 || c.Stages[2].Gates != nil && len(c.Stages[2].Gates) != 0 || c.Triggers[0].For != 2*time.Minute {
		t.Fatalf("parsed plan: %+v", c)
	}
	if c.Stages[1].Triggers[0].Cooldown != 10*time.Minute || c.Stages[1].Triggers[0].MaxAttempts != 3 || c.Stages[2].Reads != rollout.New {
		t.Fatalf("defaults: %+v", c.Stages[1])
	}
	if err := (rollout.Config{}).Validate(); err != nil {
		t.Fatalf("no plan is valid: %v", err)
	}
}
