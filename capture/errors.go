package capture

import (
	"errors"
	"fmt"
	"time"

	"github.com/tidemarkhq/tidemark/envelope"
)

// MongoDB error codes capture acts on (src/mongo/base/error_codes.yml).
const (
	codeInvalidResumeToken = 260   // resumeAfter an invalidate token, or a token of another collection
	codeFatal              = 280   // ChangeStreamFatalError: before 4.4, also a resume point gone from the oplog
	codeHistoryLost        = 286   // ChangeStreamHistoryLost
	codeTooLarge           = 10334 // BSONObjectTooLarge: an event over 16 MB
)

// ErrInvalidated means the namespace's change stream ended with an
// invalidate event (the collection was dropped or renamed, or its database
// dropped). Capture of that namespace stops until an operator decides.
var ErrInvalidated = errors.New("capture: change stream invalidated")

// ErrUnwatchable means no change stream can watch the namespace.
var ErrUnwatchable = errors.New("capture: namespace cannot be watched")

// ErrUnresumable means the server refused the checkpointed resume token.
var ErrUnresumable = errors.New("capture: resume token refused")

// errSkipped asks runNamespace to reopen the stream at once: an event was
// dead-lettered and the checkpoint moved past it.
var errSkipped = errors.New("capture: event skipped")

// Invalidation is what ended a namespace's stream, kept in its checkpoint.
type Invalidation struct {
	// Op is the event that caused it: "drop", "rename", "dropDatabase", or
	// "invalidate" when the server sent no cause first.
	Op string `json:"op"`
	// To is the new namespace of a rename.
	To string `json:"to,omitempty"`
	T  uint32 `json:"t"`
	I  uint32 `json:"i"`
	// Token is the invalidate event's resume token when Invalidate is true,
	// else the causing event's (the stand-in sends no invalidate).
	Token      []byte    `json:"token"`
	Invalidate bool      `json:"invalidate"`
	Time       time.Time `json:"time"`
}

func (inv *Invalidation) err(ns string) error {
	return &InvalidatedError{Namespace: ns, Op: inv.Op, To: inv.To, At: envelope.Version{T: inv.T, I: inv.I}}
}

// InvalidatedError names what happened to the namespace and the operator's
// choices. Rows written for the namespace stay in Cassandra until removed.
type InvalidatedError struct {
	Namespace string
	Op        string
	To        string
	At        envelope.Version
}

func (e *InvalidatedError) Error() string {
	what := map[string]string{"drop": "was dropped", "dropDatabase": "was dropped with its database",
		"rename": "was renamed to " + e.To, "invalidate": "was invalidated"}[e.Op]
	next := "restart it from now with a full backfill: `tidemark backfill --namespace %[1]s --reset-stream --reason ...`, " +
		"then delete the rows of documents that no longer exist: `tidemark reconcile` and `tidemark repair --report ID`; " +
		"or continue after the drop: `tidemark backfill --namespace %[1]s --resume-after-invalidate --reason ...`"
	if e.Op == "rename" {
		next = "capture the new name by adding " + e.To + " to capture.namespaces (its backfill re-emits every document); " +
			"to keep capturing %[1]s once it exists again: `tidemark backfill --namespace %[1]s --reset-stream --reason ...`"
	}
	return fmt.Sprintf("capture %s: the collection %s at %s; its change stream ended. "+next+" (docs/mongodb.md, invalidate)",
		e.Namespace, what, e.At)
}

func (e *InvalidatedError) Unwrap() error { return ErrInvalidated }

// UnwatchableError says why a namespace cannot be captured.
type UnwatchableError struct {
	Namespace string
	Reason    string
}

func (e *UnwatchableError) Error() string {
	return fmt.Sprintf("capture %s: cannot capture: %s; remove it from capture.namespaces", e.Namespace, e.Reason)
}

func (e *UnwatchableError) Unwrap() error { return ErrUnwatchable }

// UnresumableError: the server refused the checkpoint's resume token (260):
// it is an invalidate token used with resumeAfter, or not from this
// collection. Retrying cannot help.
type UnresumableError struct {
	Namespace  string
	Checkpoint envelope.Version
	Cause      error
}

func (e *UnresumableError) Error() string {
	return fmt.Sprintf("capture %s: the server refuses to resume after %s (%v); "+
		"restart with a full backfill: `tidemark backfill --namespace %s --reset-stream --reason ...`",
		e.Namespace, e.Checkpoint, e.Cause, e.Namespace)
}

func (e *UnresumableError) Unwrap() []error { return []error{ErrUnresumable, e.Cause} }
