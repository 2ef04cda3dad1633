package envelope

import (
	"fmt"
	"time"
)

// Version is a source cluster time: a BSON Timestamp (T seconds, I ordinal).
// It is the version of every row tidemark writes; see DESIGN.md,
// "version-stamped last-write-wins".
type Version struct {
	T uint32
	I uint32
}

// maxOrdinal is the largest ordinal that keeps Micros strictly monotonic. MongoDB
// increments I per operation within one second; a million writes in one second on
// one replica set is far beyond what it can do, so the bound holds in practice.
const maxOrdinal = 999_999

// Micros is the Cassandra write timestamp for v: T*1_000_000 + I. It is
// microsecond-comparable with wall clocks, so native writes made after cut-over,
// which Cassandra stamps with the current time in microseconds, still win.
func (v Version) Micros() int64 {
	i := v.I
	if i > maxOrdinal {
		i = maxOrdinal
	}
	return int64(v.T)*1_000_000 + int64(i)
}

// VersionFromMicros is the inverse of Micros for ordinals up to 999,999.
func VersionFromMicros(us int64) Version {
	if us < 0 {
		return Version{}
	}
	return Version{T: uint32(us / 1_000_000), I: uint32(us % 1_000_000)}
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than o.
func (v Version) Compare(o Version) int {
	switch {
	case v.T < o.T:
		return -1
	case v.T > o.T:
		return 1
	case v.I < o.I:
		return -1
	case v.I > o.I:
		return 1
	}
	return 0
}

// Before reports whether v is strictly older than o.
func (v Version) Before(o Version) bool { return v.Compare(o) < 0 }

// IsZero reports whether v is the zero version.
func (v Version) IsZero() bool { return v.T == 0 && v.I == 0 }

// Time is the wall-clock second of v.
func (v Version) Time() time.Time { return time.Unix(int64(v.T), 0).UTC() }

// Below is the version a backfill row takes when the change stream covering the
// backfill was opened at t0: the largest version strictly below t0 (in Micros
// order too), so that every change the stream replays after t0 wins over it.
func Below(t0 Version) Version {
	if t0.IsZero() {
		return t0
	}
	if t0.I > maxOrdinal {
		return Version{T: t0.T, I: maxOrdinal - 1}
	}
	if t0.I > 0 {
		return Version{T: t0.T, I: t0.I - 1}
	}
	return Version{T: t0.T - 1, I: maxOrdinal}
}

// Max returns the newer of a and b.
func Max(a, b Version) Version {
	if a.Before(b) {
		return b
	}
	return a
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.T, v.I) }
