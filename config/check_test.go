package config

import (
	"strings"
	"testing"
)

// TestConfigRefusesValuesThatBreakLater covers the values that loaded
// without a word and then panicked or silently did something else. Each
// case is one class; the last one puts them all in one file and expects
// every problem in one error.
func TestConfigRefusesValuesThatBreakLater(t *testing.T) {
	const base = "spec: examples/specs/users.yaml\nadmin: {tokens_file: /etc/tidemark/tokens}\ncapture: {namespaces: [app.users]}\n"
	gates := `rollout:
  stages:
    - name: canary
      slice: {collections: [app.users], share: "10%"}
      gates: [{name: lag, signal: lag_records, max: 10, window: -5s}]
`
	cases := []struct {
		name string
		yaml string
		env  map[string]string
		want []string
	}{
		{"retry backoff negative", "sink: {retry_backoff: -1s}\n", nil, []string{"sink.retry_backoff: -1s is negative"}},
		{"mark interval negative", "sink: {mark_interval: -10s}\n", nil, []string{"sink.mark_interval: -10s is negative"}},
		{"throttle window negative", "sink: {throttle: {window: -1ms}}\n", nil, []string{"sink.throttle.window: -1ms is negative"}},
		{"cassandra timeout negative", "cassandra: {timeout: -3s}\n", nil, []string{"cassandra.timeout: -3s is negative"}},
		{"reconcile interval negative", "reconcile: {interval: -1m}\n", nil, []string{"reconcile.interval: -1m0s is negative"}},
		{"gate window negative", gates, nil, []string{"rollout.stages[0].gates[0].window: -5s is negative"}},
		{"election session timeout negative", "election: {enabled: true, session_timeout: -10s}\n", nil, []string{"election.session_timeout: -10s is negative"}},
		{"unknown consistency", "sink: {consistency: LOCAL_QUOROM}\n", nil, []string{`sink.consistency: "LOCAL_QUOROM" is not a Cassandra write consistency`}},
		{"serial is not a write consistency", "sink: {consistency: serial}\n", nil, []string{`sink.consistency: "serial"`}},
		{"unknown log level", "log: {level: verbose}\n", nil, []string{`log.level: "verbose"`}},
		{"log level from env", "", map[string]string{"TIDEMARK_LOG_LEVEL": "trace"}, []string{`log.level: "trace"`}},
		{"log level with offset", "log: {level: INFO+2}\n", nil, []string{`log.level: "INFO+2"`}},
		{"unknown log format", "log: {format: logfmt}\n", nil, []string{`log.format: "logfmt"`}},
		{"empty broker", "kafka: {brokers: [\"127.0.0.1:9092\", \"\"]}\n", nil, []string{"kafka.brokers[1]: empty address"}},
		{"blank broker", "kafka: {brokers: [\"  \"]}\n", nil, []string{"kafka.brokers[0]: empty address"}},
		{"all at once", "sink: {retry_backoff: -1s, consistency: QUORUMS}\nlog: {level: loud, format: xml}\nkafka: {brokers: [\"\"]}\n", nil,
			[]string{"5 problem(s)", "sink.retry_backoff: -1s is negative", `sink.consistency: "QUORUMS"`, `log.level: "loud"`, `log.format: "xml"`, "kafka.brokers[0]: empty address"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := base + tc.yaml
			_, err := Parse([]byte(y), func(k string) string { return tc.env[k] })
			if err == nil {
				t.Fatalf("accepted:\n%s", y)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	// The same file without the bad values loads, so each case above fails
	// for its own value only.
	for _, ok := range []string{"", "sink: {retry_backoff: 250ms, consistency: local_one}\nlog: {level: DEBUG, format: json}\n"} {
		if _, err := Parse([]byte(base+ok), func(string) string { return "" }); err != nil {
			t.Errorf("valid config refused: %v\n%s", err, ok)
		}
	}
}
