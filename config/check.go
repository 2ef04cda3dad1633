package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// writeConsistencies are the levels Cassandra accepts for a plain write.
// SERIAL and LOCAL_SERIAL are only for the Paxos phase of lightweight
// transactions and for reads, so a write at either fails on every call.
var writeConsistencies = []string{"ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"}

// checkValues refuses values that the sections' own validation accepts but
// that break or silently change behaviour at run time: a negative duration
// anywhere (a retry backoff of -1s panics on the first Cassandra timeout, a
// negative gate window passes every gate), an unknown write consistency (the
// sink fell back to LOCAL_QUORUM without a word), an unknown log level or
// format (fell back to info/text), and an empty broker address.
func (c *Config) checkValues() []error {
	var errs []error
	walkDurations(reflect.ValueOf(c).Elem(), "", func(path string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative; durations and windows must be positive (or 0 for the default)", path, d))
		}
	})
	if s := c.Sink.Consistency; s != "" && !contains(writeConsistencies, strings.ToUpper(s)) {
		errs = append(errs, fmt.Errorf("sink.consistency: %q is not a Cassandra write consistency (%s)", s, strings.Join(writeConsistencies, ", ")))
	}
	switch strings.ToLower(c.Log.Level) {
	case "", "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q (debug, info, warn, error)", c.Log.Level))
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q (text, json)", c.Log.Format))
	}
	for i, b := range c.Kafka.Brokers {
		if strings.TrimSpace(b) == "" {
			errs = append(errs, fmt.Errorf("kafka.brokers[%d]: empty address; list host:port entries", i))
		}
	}
	return errs
}

var durationType = reflect.TypeOf(time.Duration(0))

// walkDurations calls fn for every time.Duration reachable from v through
// structs, slices, arrays, maps and pointers, naming it by its YAML path
// (rollout.stages[0].gates[1].window), so a field added to any section later
// is checked without being listed here.
func walkDurations(v reflect.Value, path string, fn func(string, time.Duration)) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			walkDurations(v.Elem(), path, fn)
		}
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			if strings.Contains(f.Tag.Get("yaml"), ",inline") {
				p = path
			}
			walkDurations(v.Field(i), p, fn)
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			walkDurations(v.Index(i), fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			walkDurations(v.MapIndex(k), fmt.Sprintf("%s.%v", path, k), fn)
		}
	case reflect.Int64:
		if v.Type() == durationType {
			fn(path, time.Duration(v.Int()))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
