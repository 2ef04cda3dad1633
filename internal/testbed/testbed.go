// Package testbed connects integration tests to the local stack (or to servers
// named by environment variables). A server that does not answer fails the test
// with its name: integration tests never skip.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// KafkaBrokers is TIDEMARK_KAFKA_BROKERS (comma-separated), default 127.0.0.1:9092.
func KafkaBrokers() []string {
	return strings.Split(env("TIDEMARK_KAFKA_BROKERS", "127.0.0.1:9092"), ",")
}

// CassandraHosts is TIDEMARK_CASSANDRA_HOSTS (comma-separated), default 127.0.0.1:9042.
func CassandraHosts() []string {
	return strings.Split(env("TIDEMARK_CASSANDRA_HOSTS", "127.0.0.1:9042"), ",")
}

// MongoURI is TIDEMARK_MONGO_URI, default mongodb://127.0.0.1:27017.
func MongoURI() string { return env("TIDEMARK_MONGO_URI", "mongodb://127.0.0.1:27017") }

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

const hint = "start the local stack with `make stack-up`, or point TIDEMARK_KAFKA_BROKERS / TIDEMARK_CASSANDRA_HOSTS / TIDEMARK_MONGO_URI at running servers"

// Kafka checks that the brokers answer a metadata request and returns their addresses.
func Kafka(t testing.TB) []string {
	t.Helper()
	brokers := KafkaBrokers()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("Kafka at %v: %v", brokers, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(cl).BrokerMetadata(ctx); err != nil {
		t.Fatalf("Kafka is not reachable at %v: %v; %s", brokers, err, hint)
	}
	return brokers
}

// KafkaAdmin returns an admin client for the stack's Kafka, closed at cleanup.
func KafkaAdmin(t testing.TB) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(Kafka(t)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// CreateTopic creates a topic with the given partitions, deleted at cleanup.
func CreateTopic(t testing.TB, adm *kadm.Client, topic string, partitions int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		adm.DeleteTopics(ctx, topic)
	})
}

// Cassandra opens a session on the stack's Cassandra, closed at cleanup.
func Cassandra(t testing.TB) *gocql.Session {
	t.Helper()
	hosts := CassandraHosts()
	cl := gocql.NewCluster(hosts...)
	cl.Consistency = gocql.One
	cl.Timeout = 20 * time.Second
	cl.ConnectTimeout = 10 * time.Second
	s, err := cl.CreateSession()
	if err != nil {
		t.Fatalf("Cassandra is not reachable at %v: %v; %s", hosts, err, hint)
	}
	t.Cleanup(s.Close)
	return s
}

// CreateKeyspace creates keyspace name (SimpleStrategy, replication 1), dropped at cleanup.
func CreateKeyspace(t testing.TB, s *gocql.Session, name string) {
	t.Helper()
	q := fmt.Sprintf("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", name)
	if err := s.Query(q).Exec(); err != nil {
		t.Fatalf("create keyspace %s: %v", name, err)
	}
	t.Cleanup(func() { s.Query("DROP KEYSPACE IF EXISTS " + name).Exec() })
}

// Mongo connects to the stack's MongoDB server, disconnected at cleanup.
func Mongo(t testing.TB) *mongo.Client {
	t.Helper()
	uri := MongoURI()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cl, err := mongo.Connect(ctx, options.Client().ApplyURI(uri).SetServerSelectionTimeout(10*time.Second))
	if err == nil {
		err = cl.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
	}
	if err != nil {
		t.Fatalf("MongoDB is not reachable at %s: %v; %s", uri, err, hint)
	}
	t.Cleanup(func() { cl.Disconnect(context.Background()) })
	return cl
}

var notIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// UniqueName is a fresh name for a topic, keyspace or database: lowercase, a
// valid CQL identifier, under 48 characters, unique across tests sharing a stack.
func UniqueName(t testing.TB, prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	p := notIdent.ReplaceAllString(strings.ToLower(prefix), "_")
	if len(p) > 30 {
		p = p[:30]
	}
	return fmt.Sprintf("tm_%s_%s", p, hex.EncodeToString(b[:]))
}
