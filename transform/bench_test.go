package transform

import (
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
)

// benchUser is a ~1 KB document of 20 fields, as the struct a hand-written
// migration would decode it into.
type benchUser struct {
	ID      primitive.ObjectID                 `bson:"_id"`
	Email   string                             `bson:"email"`
	Name    struct{ First, Last string }       `bson:"name"`
	Age     int32                              `bson:"age"`
	Balance primitive.Decimal128               `bson:"balance"`
	Created time.Time                          `bson:"created"`
	Tags    []string                           `bson:"tags"`
	Address struct{ Street, City, Zip string } `bson:"address"`
	Prefs   map[string]string                  `bson:"prefs"`
	Status  string                             `bson:"status"`
	Score   float64                            `bson:"score"`
	Bio     string                             `bson:"bio"`
	F13     int64                              `bson:"f13"`
	F14     bool                               `bson:"f14"`
	F15     string                             `bson:"f15"`
	F16     string                             `bson:"f16"`
	F17     int32                              `bson:"f17"`
	F18     float64                            `bson:"f18"`
	F19     string                             `bson:"f19"`
	F20     string                             `bson:"f20"`
}

func benchDoc(b testing.TB) bson.Raw {
	dec, _ := primitive.ParseDecimal128("1234.56")
	u := benchUser{ID: primitive.NewObjectID(), Email: "Ada.Lovelace@Example.org", Age: 36, Balance: dec,
		Created: time.Date(1990, 1, 2, 3, 4, 5, 0, time.UTC), Tags: []string{"math", "engines", "poetry"},
		Prefs: map[string]string{"lang": "en", "theme": "dark"}, Status: "active", Score: 97.5,
		Bio: fmt.Sprintf("%0500d", 7), F13: 1 << 40, F14: true, F15: "fifteen", F16: "sixteen", F17: 17, F18: 18.5, F19: "nineteen", F20: "twenty"}
	u.Name.First, u.Name.Last = "Ada", "Lovelace"
	u.Address.Street, u.Address.City, u.Address.Zip = "12 St James's Square", "London", "SW1Y"
	raw, err := bson.Marshal(u)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// BenchmarkTransform maps the document to two tables and encodes every row
// value canonically (what reconcile hashes); the baseline decodes the same
// document into a struct with bson.Unmarshal, no mapping at all.
func BenchmarkTransform(b *testing.B) {
	m, err := Load("../examples/specs/users.yaml")
	if err != nil {
		b.Fatal(err)
	}
	doc := benchDoc(b)
	// The baseline's rate, from its last (largest) run, for of-baseline.
	var baseline float64
	b.Run("baseline=bson.Unmarshal", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		for i := 0; i < b.N; i++ {
			var u benchUser
			if err := bson.Unmarshal(doc, &u); err != nil {
				b.Fatal(err)
			}
		}
		baseline = float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(baseline, "docs/s")
	})
	b.Run("transform+canonical", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		var buf []byte
		for i := 0; i < b.N; i++ {
			rows, err := m.Apply("app.users", doc)
			if err != nil || len(rows) != 2 {
				b.Fatal(err)
			}
			for _, r := range rows {
				buf, _ = r.Table.AppendCanonical(buf[:0], r.Values)
			}
		}
		rate := float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "docs/s")
		if baseline > 0 {
			b.ReportMetric(rate/baseline, "of-baseline")
		}
	})
}
