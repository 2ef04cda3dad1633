package envelope

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
