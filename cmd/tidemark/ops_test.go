package main

import (
	"testing"

	"github.com/tidemarkhq/tidemark/sink"
)

func TestPartitionsTextIsForPeople(t *testing.T) {
	for _, tc := range []struct {
		in   []sink.TopicPartition
		want string
	}{
		{nil, "nothing"},
		{[]sink.TopicPartition{{Topic: "tidemark.app.users", Partition: 0}}, "tidemark.app.users 0"},
		{[]sink.TopicPartition{{Topic: "t.b", Partition: 5}, {Topic: "t.a", Partition: 2}, {Topic: "t.b", Partition: 0}, {Topic: "t.b", Partition: 11}},
			"t.a 2; t.b 0,5,11"},
	} {
		if got := partitionsText(tc.in); got != tc.want {
			t.Errorf("partitionsText(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
