package reconcile

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
)

// TestKeepNamedMarks checks reconcile.keep_verified_marks' rule: each clean
// round adds a named verified mark per partition, and only the newest keep
// of them stay in the store, whatever order their names sort in.
func TestKeepNamedMarks(t *testing.T) {
	ctx := context.Background()
	st := checkpointstest.New()
	key := checkpoints.PartitionKey(checkpoints.PrefixVerified, "t", 0)
	at := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	for i := range 12 {
		// Names that sort against time: retention must go by the mark's time.
		m := checkpoints.Mark{Topic: "t", Offset: int64(i), Wall: at.Add(time.Duration(i) * time.Minute), Name: fmt.Sprintf("r%02d", 99-i)}
		if err := keepNamedMark(ctx, st, key, m, 5); err != nil {
			t.Fatal(err)
		}
	}
	all, err := st.List(ctx, key+"/")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		t.Fatalf("%d named marks kept, want 5", len(all))
	}
	for i := 7; i < 12; i++ {
		if _, ok := all[fmt.Sprintf("%s/r%02d", key, 99-i)]; !ok {
			t.Errorf("the mark of round %d (among the newest five) is gone; kept %v", i, keys(all))
		}
	}
	c := Config{}.WithDefaults()
	if c.KeepVerifiedMarks != DefaultKeepVerifiedMarks || (Config{KeepVerifiedMarks: -1}).WithDefaults().Validate() == nil {
		t.Errorf("keep_verified_marks: default %d, -1 not refused", c.KeepVerifiedMarks)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
