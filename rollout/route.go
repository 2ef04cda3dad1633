package rollout

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/tidemarkhq/tidemark/envelope"
)

// Routes is the read-route table: where applications read each key. It is
// what GET /v1/route answers from and what the route file holds, so a client
// can decide locally with Route and the same hash.
type Routes struct {
	// Generation grows by one on every change; clients can skip equal tables.
	Generation  int64     `json:"generation"`
	PlanVersion string    `json:"plan_version"`
	Stage       string    `json:"stage"`
	Updated     time.Time `json:"updated"`
	// Collections maps "db.collection" to its rule; any other collection reads legacy.
	Collections map[string]CollectionRoute `json:"collections"`
}

// CollectionRoute is one collection's rule: keys whose bucket is below
// BasisPoints read from InSlice, every other key from legacy.
type CollectionRoute struct {
	BasisPoints int  `json:"basis_points"`
	InSlice     Mode `json:"in_slice"`
}

// Route answers where to read key (envelope.Key bytes) of namespace ns.
func (r *Routes) Route(ns string, key []byte) Mode {
	if r == nil {
		return Legacy
	}
	c, ok := r.Collections[ns]
	if !ok || !(c.BasisPoints >= Buckets || Bucket(key) < c.BasisPoints) {
		return Legacy
	}
	return c.InSlice
}

// RouteID is Route for an _id value.
func (r *Routes) RouteID(ns string, id bson.RawValue) Mode { return r.Route(ns, envelope.Key(id)) }

// LoadRoutes reads a route file written by the daemon.
func LoadRoutes(path string) (*Routes, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rollout: route file: %w", err)
	}
	var r Routes
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("rollout: route file %s: %w", path, err)
	}
	return &r, nil
}

// writeRoutes replaces path with r: a temporary file in the same directory,
// synced, then renamed over it, so a reader sees the old table or the new one,
// never half of either.
func writeRoutes(path string, r *Routes) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("rollout: route file: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rollout: route file %s: %w", path, err)
	}
	return nil
}
