package daemon

// The admin API's request and answer bodies, in one place for clients: the
// CLI decodes these, and a program driving tidemark can import them. Routes
// and the role each needs are in roles.go and docs/runbook.md.

import (
	"time"

	"github.com/tidemarkhq/tidemark/capture"
	"github.com/tidemarkhq/tidemark/reconcile"
	"github.com/tidemarkhq/tidemark/rollout"
	"github.com/tidemarkhq/tidemark/sink"
)

// Status is GET /v1/status.
type Status struct {
	Roles       []string                    `json:"roles"`
	SpecVersion string                      `json:"spec_version,omitempty"`
	Partitions  []sink.PartitionLag         `json:"partitions"`
	Paused      []sink.TopicPartition       `json:"paused"`
	Backfill    map[string]capture.Progress `json:"backfill"`
	// Streams is each captured namespace's change-stream position and, when
	// capture of it stopped, why.
	Streams map[string]capture.StreamStatus `json:"streams,omitempty"`
	Leader  LeaderInfo                      `json:"leader"`
}

// PauseRequest is the body of POST /v1/pause and /v1/resume.
type PauseRequest struct {
	Topic      string  `json:"topic"`
	Partitions []int32 `json:"partitions"`
	Reason     string  `json:"reason"`
}

// LeaderRecord is what the elected leader stores, so that any daemon can
// name it (plan commands go to the leader), and the newest term's epoch.
type LeaderRecord struct {
	Identity string    `json:"identity"` // host/pid
	Admin    string    `json:"admin"`    // its admin.listen
	Since    time.Time `json:"since"`
	// Epoch is the newest term of office: each daemon taking office adds
	// one by compare-and-swap, so no two terms share an epoch and a later
	// term's is higher. Writes made because a daemon leads carry it.
	Epoch int64 `json:"epoch"`
}

// LeaderInfo is the answer of GET /v1/leader.
type LeaderInfo struct {
	Election bool          `json:"election"`
	Leading  bool          `json:"leading"` // this daemon
	Leader   *LeaderRecord `json:"leader,omitempty"`
}

// RewindRequest is the body of POST /v1/rewind. Exactly one target is set.
type RewindRequest struct {
	Topic      string     `json:"topic"`
	Partitions []int32    `json:"partitions,omitempty"`
	ToTime     *time.Time `json:"to_time,omitempty"`
	ToOffset   *int64     `json:"to_offset,omitempty"`
	By         *int64     `json:"by,omitempty"`
	// ToMark is the name of a verified mark (a clean reconcile round's report
	// id), or "latest" for each partition's newest verified mark.
	ToMark  string `json:"to_mark,omitempty"`
	Execute bool   `json:"execute"`
	Reason  string `json:"reason"`
}

// RewindPlan is what a rewind would do, per partition.
type RewindPlan struct {
	ID         string           `json:"id"`
	Topic      string           `json:"topic"`
	Partitions []PartitionPlan  `json:"partitions"`
	Replay     int64            `json:"records_to_replay"`
	GCGrace    int              `json:"gc_grace_seconds"`
	Executed   bool             `json:"executed"`
	Done       map[string]int64 `json:"done,omitempty"`
}

// PartitionPlan is one partition's move.
type PartitionPlan struct {
	Partition int32 `json:"partition"`
	Current   int64 `json:"current"`
	Target    int64 `json:"target"`
	Start     int64 `json:"log_start"`
	Replay    int64 `json:"replay"`
	// FirstVersion and FirstTime describe the oldest record the replay starts
	// with (absent when nothing is replayed).
	FirstVersion string     `json:"first_version,omitempty"`
	FirstTime    *time.Time `json:"first_time,omitempty"`
	// Mark names the verified mark the target came from.
	Mark string `json:"mark,omitempty"`
}

// ReportListing is one entry of GET /v1/reports.
type ReportListing struct {
	ID     string           `json:"id"`
	Status string           `json:"status"`
	Scope  string           `json:"scope"`
	Start  time.Time        `json:"start"`
	End    time.Time        `json:"end"`
	Counts map[string]int64 `json:"counts"`
}

// RoundStatus is GET /v1/reconcile and the answer to POST /v1/reconcile.
type RoundStatus struct {
	Running  bool                `json:"running"`
	Progress *reconcile.Progress `json:"progress,omitempty"`
}

// RoundRequest is the body of POST /v1/reconcile.
type RoundRequest struct {
	Reason string          `json:"reason"`
	Scope  reconcile.Scope `json:"scope"`
	Fresh  bool            `json:"fresh,omitempty"`
}

// RepairRequest is the body of POST /v1/repair: a report's divergent keys,
// or the given _ids of a namespace.
type RepairRequest struct {
	Reason    string   `json:"reason"`
	Report    string   `json:"report,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	IDs       []string `json:"ids,omitempty"`
	// Keys are target rows (table and canonical key bytes, as a report's
	// divergent list or repair's output gives them) of Namespace.
	Keys []reconcile.KeyRef `json:"keys,omitempty"`
}

// RouteAnswer is GET /v1/route.
type RouteAnswer struct {
	Collection string       `json:"collection"`
	ID         string       `json:"id"`
	Route      rollout.Mode `json:"route"`
	Bucket     int          `json:"bucket"`
	Stage      string       `json:"stage"`
	Generation int64        `json:"generation"`
}

// PlanRequest is the body of POST /v1/plan/*.
type PlanRequest struct {
	Reason  string `json:"reason"`
	Force   bool   `json:"force,omitempty"`
	Hard    bool   `json:"hard,omitempty"`
	Trigger string `json:"trigger,omitempty"`
}
