package rollout_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/tidemarkhq/tidemark/rollout"
)

// An application routes its reads from the route file the daemon keeps
// (rollout.LoadRoutes(path)); here the same JSON comes from a string.
func ExampleRoutes_RouteID() {
	var routes rollout.Routes
	json.Unmarshal([]byte(`{"generation": 3, "stage": "tenth",
		"collections": {"app.users": {"basis_points": 1000, "in_slice": "new"}}}`), &routes)
	for _, id := range []any{int64(42), int32(6), "user-7"} {
		t, b, _ := bson.MarshalValue(id)
		v := bson.RawValue{Type: t, Value: b}
		fmt.Printf("%v: bucket %d, read from %s\n", id, rollout.BucketOfID(v), routes.RouteID("app.users", v))
	}
	fmt.Println("app.orders:", routes.RouteID("app.orders", bson.RawValue{Type: bson.TypeInt64, Value: []byte{42, 0, 0, 0, 0, 0, 0, 0}}))
	// Output:
	// 42: bucket 5870, read from legacy
	// 6: bucket 272, read from new
	// user-7: bucket 6018, read from legacy
	// app.orders: legacy
}

func FuzzShare(f *testing.F) {
	for _, s := range []string{"1%", "12.5%", "100%", "0.01%", "50", "1e2%", "-0%", "NaN%", "Inf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var sh rollout.Share
		if err := sh.UnmarshalText([]byte(s)); err != nil {
			return
		}
		if sh <= 0 || sh > rollout.Buckets {
			t.Fatalf("%q accepted as %d basis points", s, sh)
		}
		b, _ := sh.MarshalText()
		var again rollout.Share
		if err := again.UnmarshalText(b); err != nil || again != sh {
			t.Fatalf("%q -> %s -> %v (%v)", s, b, again, err)
		}
	})
}
