package transform

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/bsontype"
)

// Conversions to the CQL types that have no BSON counterpart: date, time,
// inet, duration, tuple and vector. Each returns the Go value gocql marshals
// for the type and reads back when scanning into `any` (see canonical.go for
// how the two are compared), and refuses anything it would have to change.

const (
	msPerDay = 24 * 60 * 60 * 1000
	// nsPerDay bounds a CQL time: nanoseconds since midnight, 0 to 86399999999999.
	nsPerDay = 24 * 60 * 60 * 1_000_000_000
	// A CQL date is an unsigned 32-bit count of days with the epoch at 2^31.
	minDateDays = -(1 << 31)
	maxDateDays = 1<<31 - 1
)

// toDate converts a BSON Date at midnight UTC, or a "yyyy-mm-dd" string, to
// a date (a time.Time at midnight UTC, as gocql reads a date back). A Date
// with a time of day is refused rather than truncated: the day it belongs to
// depends on a time zone the document does not carry.
func toDate(v bson.RawValue, rule string) (any, error) {
	switch v.Type {
	case bsontype.DateTime:
		ms := v.DateTime()
		if ms%msPerDay != 0 {
			t := time.UnixMilli(ms).UTC()
			return nil, fail(rule, "%s has a time of day; a date column holds whole days (UTC midnight), "+
				"use a timestamp column", t.Format(time.RFC3339Nano))
		}
		days := ms / msPerDay
		if days < minDateDays || days > maxDateDays {
			return nil, fail(rule, "%d days from 1970-01-01 overflows date", days)
		}
		return time.UnixMilli(ms).UTC(), nil
	case bsontype.String:
		s := v.StringValue()
		t, err := time.Parse("2006-01-02", s)
		if err != nil {
			return nil, fail(rule, "%q is not a date (yyyy-mm-dd)", s)
		}
		return t, nil
	}
	return nil, fail(rule, "no conversion from %s to date", v.Type)
}

// toTime converts nanoseconds since midnight (an integer) or an
// "hh:mm:ss[.fffffffff]" string (CQL's time literal) to a time, as gocql
// takes and returns it: a time.Duration.
func toTime(v bson.RawValue, rule string) (any, error) {
	parsed, n, err := parsedOrInteger(v, rule, "time", func(s string) (any, error) { return parseTimeOfDay(s) })
	if parsed != nil || err != nil {
		return parsed, err
	}
	if n < 0 || n >= nsPerDay {
		return nil, fail(rule, "%d ns is not a time of day (0 to %d)", n, int64(nsPerDay-1))
	}
	return time.Duration(n), nil
}

// parseTimeOfDay parses "hh:mm:ss[.fffffffff]" as Cassandra's TimeSerializer
// does: one or two digit fields, up to nine fraction digits.
func parseTimeOfDay(s string) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("%q is not a time of day (hh:mm:ss[.fffffffff])", s)
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return bad()
	}
	sec, frac, hasFrac := strings.Cut(parts[2], ".")
	limits := []int64{23, 59, 59}
	var hms [3]int64
	for i, p := range []string{parts[0], parts[1], sec} {
		if len(p) < 1 || len(p) > 2 || !digits(p) {
			return bad()
		}
		n, _ := strconv.ParseInt(p, 10, 64)
		if n > limits[i] {
			return bad()
		}
		hms[i] = n
	}
	var ns int64
	if hasFrac {
		if len(frac) < 1 || len(frac) > 9 || !digits(frac) {
			return bad()
		}
		ns, _ = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
	}
	return time.Duration(((hms[0]*60+hms[1])*60+hms[2])*1e9 + ns), nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// toInet converts an IPv4 or IPv6 address, as text or as 4 or 16 bytes of
// generic binary, to a net.IP of 4 bytes (IPv4) or 16 (IPv6), the forms gocql
// writes and reads. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is refused:
// the driver would write it as the 4-byte IPv4 address, which Cassandra
// holds as a different value; store the IPv4 form.
func toInet(v bson.RawValue, rule string) (any, error) {
	var a netip.Addr
	switch v.Type {
	case bsontype.String:
		s := v.StringValue()
		var err error
		if a, err = netip.ParseAddr(s); err != nil {
			return nil, fail(rule, "%q is not an IP address", s)
		}
		if a.Zone() != "" {
			return nil, fail(rule, "%q has a zone, which inet cannot hold", s)
		}
	case bsontype.Binary:
		sub, b := v.Binary()
		if sub != bsontype.BinaryGeneric || len(b) != 4 && len(b) != 16 {
			return nil, fail(rule, "binary subtype %d of %d bytes is not an IP address (4 or 16 bytes, subtype 0)", sub, len(b))
		}
		a, _ = netip.AddrFromSlice(b)
	default:
		return nil, fail(rule, "no conversion from %s to inet", v.Type)
	}
	if a.Is4In6() {
		return nil, fail(rule, "%s is an IPv4-mapped IPv6 address; the driver writes it as %s: store that", a, a.Unmap())
	}
	return net.IP(a.AsSlice()), nil
}

// toDuration converts integral nanoseconds, or a duration as CQL parses it
// (1h30m, 2mo3d, P1Y2M3DT4H5M6S, P2W, P0001-02-03T04:05:06, a leading - for
// a negative one), to a gocql.Duration. Months, days and nanoseconds stay
// apart, as Cassandra keeps them: a month is not a number of days.
func toDuration(v bson.RawValue, rule string) (any, error) {
	parsed, n, err := parsedOrInteger(v, rule, "duration", func(s string) (any, error) { return parseDuration(s) })
	if parsed != nil || err != nil {
		return parsed, err
	}
	return gocql.Duration{Nanoseconds: n}, nil
}

// parsedOrInteger is what time and duration share: a string goes through
// parse (its value returned as parsed), an integral number of nanoseconds
// comes back as n, and any other BSON type is refused, naming to.
func parsedOrInteger(v bson.RawValue, rule, to string, parse func(string) (any, error)) (parsed any, n int64, err error) {
	switch v.Type {
	case bsontype.String:
		p, err := parse(v.StringValue())
		if err != nil {
			return nil, 0, fail(rule, "%v", err)
		}
		return p, 0, nil
	case bsontype.Int32, bsontype.Int64, bsontype.Double, bsontype.Decimal128:
		n, err := asInt64(v, rule)
		return nil, n, err
	}
	return nil, 0, fail(rule, "no conversion from %s to %s", v.Type, to)
}

// durationUnits are CQL's duration units, longest first where one is a
// prefix of another ("mo", "ms" before "m"), each as months, days or
// nanoseconds.
var durationUnits = []struct {
	unit   string
	months int64
	days   int64
	nanos  int64
}{
	{"mo", 1, 0, 0}, {"ms", 0, 0, 1e6}, {"us", 0, 0, 1e3}, {"µs", 0, 0, 1e3}, {"ns", 0, 0, 1},
	{"y", 12, 0, 0}, {"w", 0, 7, 0}, {"d", 0, 1, 0}, {"h", 0, 0, 3600e9}, {"m", 0, 0, 60e9}, {"s", 0, 0, 1e9},
}

// durationAcc adds up a duration's parts, refusing overflow.
type durationAcc struct {
	months, days, nanos int64
	err                 error
}

func (a *durationAcc) add(n, months, days, nanos int64) {
	mul := func(x, y int64) int64 {
		if y != 0 && (x > math.MaxInt64/y) {
			a.err = fmt.Errorf("overflows")
			return 0
		}
		return x * y
	}
	sum := func(x, y int64) int64 {
		if x > math.MaxInt64-y {
			a.err = fmt.Errorf("overflows")
		}
		return x + y
	}
	a.months = sum(a.months, mul(n, months))
	a.days = sum(a.days, mul(n, days))
	a.nanos = sum(a.nanos, mul(n, nanos))
}

// parseDuration follows Cassandra's Duration.from: the unit format, and the
// three ISO 8601 formats, all with whole numbers only.
func parseDuration(s string) (gocql.Duration, error) {
	bad := func(why string) (gocql.Duration, error) {
		return gocql.Duration{}, fmt.Errorf("%q is not a duration (%s)", s, why)
	}
	neg := strings.HasPrefix(s, "-")
	body := strings.ToLower(strings.TrimPrefix(s, "-"))
	if body == "" {
		return bad("empty")
	}
	var acc durationAcc
	var err error
	if strings.HasPrefix(body, "p") {
		err = parseISODuration(body[1:], &acc)
	} else {
		err = parseUnitDuration(body, &acc)
	}
	if err != nil {
		return bad(err.Error())
	}
	if acc.err != nil || acc.months > math.MaxInt32 || acc.days > math.MaxInt32 {
		return bad("overflows months (int32), days (int32) or nanoseconds (int64)")
	}
	d := gocql.Duration{Months: int32(acc.months), Days: int32(acc.days), Nanoseconds: acc.nanos}
	if neg {
		d = gocql.Duration{Months: -d.Months, Days: -d.Days, Nanoseconds: -d.Nanoseconds}
	}
	return d, nil
}

// leadingNumber reads the leading decimal digits of s.
func leadingNumber(s string) (n int64, rest string, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, s, false
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, s, false
	}
	return n, s[i:], true
}

// parseUnitDuration parses "1y2mo3w4d5h6m7s8ms9us10ns": numbers each with a
// unit, in any order, as Cassandra accepts them.
func parseUnitDuration(s string, acc *durationAcc) error {
	for s != "" {
		n, rest, ok := leadingNumber(s)
		if !ok {
			return fmt.Errorf("expected a whole number at %q", s)
		}
		found := false
		for _, u := range durationUnits {
			if strings.HasPrefix(rest, u.unit) {
				acc.add(n, u.months, u.days, u.nanos)
				s = rest[len(u.unit):]
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("unknown unit at %q (y, mo, w, d, h, m, s, ms, us, ns)", rest)
		}
	}
	return nil
}

// parseISODuration parses what follows the P of PnYnMnDTnHnMnS, PnW or
// Pyyyy-mm-ddThh:mm:ss.
func parseISODuration(s string, acc *durationAcc) error {
	if n, rest, ok := leadingNumber(s); ok && rest == "w" {
		acc.add(n, 0, 7, 0)
		return nil
	}
	if len(s) == 19 && s[4] == '-' && s[7] == '-' && s[10] == 't' && s[13] == ':' && s[16] == ':' {
		var f [6]int64
		for i, r := range [][2]int{{0, 4}, {5, 7}, {8, 10}, {11, 13}, {14, 16}, {17, 19}} {
			p := s[r[0]:r[1]]
			if !digits(p) {
				return fmt.Errorf("bad field %q", p)
			}
			f[i], _ = strconv.ParseInt(p, 10, 64)
		}
		acc.add(f[0], 12, 0, 0)
		acc.add(f[1], 1, 0, 0)
		acc.add(f[2], 0, 1, 0)
		acc.add(f[3], 0, 0, 3600e9)
		acc.add(f[4], 0, 0, 60e9)
		acc.add(f[5], 0, 0, 1e9)
		return nil
	}
	date, clock, hasT := strings.Cut(s, "t")
	if date == "" && (!hasT || clock == "") {
		return fmt.Errorf("nothing after P")
	}
	if hasT && clock == "" {
		return fmt.Errorf("nothing after T")
	}
	if err := isoFields(date, "ymd", []int64{12, 1, 0}, []int64{0, 0, 1}, []int64{0, 0, 0}, acc); err != nil {
		return err
	}
	return isoFields(clock, "hms", []int64{0, 0, 0}, []int64{0, 0, 0}, []int64{3600e9, 60e9, 1e9}, acc)
}

// isoFields parses nXnYnZ with designators in the order given, each at most once.
func isoFields(s, designators string, months, days, nanos []int64, acc *durationAcc) error {
	next := 0
	for s != "" {
		n, rest, ok := leadingNumber(s)
		if !ok || rest == "" {
			return fmt.Errorf("expected a whole number and a designator at %q", s)
		}
		i := strings.IndexByte(designators, rest[0])
		if i < 0 {
			return fmt.Errorf("unknown designator %q (%s)", rest[0], strings.ToUpper(designators))
		}
		if i < next {
			return fmt.Errorf("designator %q out of place", rest[0])
		}
		acc.add(n, months[i], days[i], nanos[i])
		next = i + 1
		s = rest[1:]
	}
	return nil
}

// toTuple converts an array of exactly as many elements as the tuple has
// components, each by its component's type; a null element is a null
// component.
func toTuple(t *cqlType, v bson.RawValue, rule string) (any, error) {
	if v.Type != bsontype.Array {
		return nil, fail(rule, "no conversion from %s to %s (it takes an array)", v.Type, t.name)
	}
	vals, err := v.Array().Values()
	if err != nil {
		return nil, fail(rule, "%v", err)
	}
	if len(vals) != len(t.elems) {
		return nil, fail(rule, "an array of %d elements for %s of %d", len(vals), t.name, len(t.elems))
	}
	out := make([]any, len(vals))
	for i, e := range vals {
		x, err := convertInner(t.elems[i], "", e, nil)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out[i] = x
	}
	return out, nil
}

// innerTuple refuses a null component in a tuple that is not a column by
// itself (one inside a collection, a tuple or a UDT): gocql v2.1.2 panics
// reading such a value back into `any` (Unmarshal of a null component into a
// nil interface), which would stop reconcile at that row.
func innerTuple(t *cqlType, x any) error {
	if t.kind != kTuple {
		return nil
	}
	c, _ := x.([]any)
	for i, e := range c {
		if e == nil {
			return fail("tuple", "[%d] is null; a tuple inside a collection, tuple or UDT cannot hold nulls "+
				"(the driver cannot read them back)", i)
		}
	}
	return nil
}

// toVector converts an array of exactly the vector's dimensions, each element
// by the vector's element type; vectors hold no nulls.
func toVector(t *cqlType, v bson.RawValue, rule string) (any, error) {
	if v.Type != bsontype.Array {
		return nil, fail(rule, "no conversion from %s to %s (it takes an array)", v.Type, t.name)
	}
	vals, err := v.Array().Values()
	if err != nil {
		return nil, fail(rule, "%v", err)
	}
	if len(vals) != t.dim {
		return nil, fail(rule, "an array of %d elements for %s", len(vals), t.name)
	}
	out := make([]any, len(vals))
	for i, e := range vals {
		x, err := convertValue(t.elem, "", e, nil)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		if x == nil {
			return nil, fail(rule, "[%d] is null; a vector cannot hold nulls", i)
		}
		out[i] = x
	}
	return out, nil
}
