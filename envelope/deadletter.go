package envelope

import (
	"encoding/json"
	"fmt"
	"time"
)

// DeadLetter is a record a stage could not process. Every stage writes the same
// shape to the dead-letter topic, so one consumer (or an operator with kcat) can
// read them all, and the original record can be re-driven once fixed.
type DeadLetter struct {
	// Stage is "capture", "transform" or "sink".
	Stage string `json:"stage"`
	// Reason says why, in words an operator can act on.
	Reason    string `json:"reason"`
	Namespace string `json:"ns,omitempty"`
	// Key is the canonical _id key (Key) of the document concerned.
	Key     []byte  `json:"key,omitempty"`
	Version Version `json:"version"`
	// Topic, Partition and Offset locate the original record when there is one.
	Topic     string `json:"topic,omitempty"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	// Record is the original record value; truncated (see Truncated) when it was
	// the reason for the dead letter, e.g. over Kafka's maximum message size.
	Record    []byte    `json:"record,omitempty"`
	Truncated bool      `json:"truncated,omitempty"`
	Time      time.Time `json:"time"`
}

// DeadLetterTopic is the dead-letter topic for a topic prefix (see Topic).
func DeadLetterTopic(prefix string) string { return prefix + ".deadletter" }

// MaxDeadLetterRecord bounds the copy of the original record kept in a dead letter.
const MaxDeadLetterRecord = 64 << 10

// EncodeDeadLetter returns the record value for d, truncating d.Record if needed.
func EncodeDeadLetter(d DeadLetter) ([]byte, error) {
	if len(d.Record) > MaxDeadLetterRecord {
		d.Record = d.Record[:MaxDeadLetterRecord]
		d.Truncated = true
	}
	if d.Time.IsZero() {
		d.Time = time.Now().UTC()
	}
	return json.Marshal(d)
}

// DecodeDeadLetter parses a dead-letter record value.
func DecodeDeadLetter(b []byte) (DeadLetter, error) {
	var d DeadLetter
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("%w: dead letter: %v", ErrMalformed, err)
	}
	return d, nil
}
