package envelope

import "sort"

// DefaultTopicPrefix is the topic prefix capture and the sink use when the
// config names none.
const DefaultTopicPrefix = "tidemark"

// Topic is the Kafka topic that carries namespace ns ("db.collection"):
// "<prefix>.<db>.<collection>". Capture writes it and the sink, the
// reconciler and the rollout read it; this is the one place that names it.
func Topic(prefix, ns string) string { return prefix + "." + ns }

// TopicPartition names one partition of a topic.
type TopicPartition struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
}

// Members lists the partitions set holds true, by topic and then partition:
// the stored form of a set of partitions (paused ones, say), so that equal
// sets are written alike.
func Members(set map[TopicPartition]bool) []TopicPartition {
	out := make([]TopicPartition, 0, len(set))
	for tp, on := range set {
		if on {
			out = append(out, tp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Topic < out[j].Topic || out[i].Topic == out[j].Topic && out[i].Partition < out[j].Partition
	})
	return out
}
