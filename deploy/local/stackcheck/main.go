// Command stackcheck waits until one server of the local stack answers a real
// client request: a Kafka metadata request, a CQL query, or a MongoDB ping.
// deploy/local/stack runs it; exit status 0 means ready.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func main() {
	server := flag.String("server", "", "kafka, cassandra or mongo")
	addr := flag.String("addr", "", "address (brokers/hosts comma-separated, or a mongodb:// URI)")
	wait := flag.Duration("wait", 90*time.Second, "how long to keep trying")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *wait)
	defer cancel()
	check := map[string]func(context.Context, string) error{"kafka": kafka, "cassandra": cassandra, "mongo": mongoPing}[*server]
	if check == nil || *addr == "" {
		fmt.Fprintln(os.Stderr, "usage: stackcheck -server kafka|cassandra|mongo -addr ADDR [-wait 90s]")
		os.Exit(2)
	}
	var last error
	for {
		attempt, stop := context.WithTimeout(ctx, 5*time.Second)
		last = check(attempt, *addr)
		stop()
		if last == nil {
			return
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "%s at %s did not answer within %s: %v\n", *server, *addr, *wait, last)
			os.Exit(1)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func kafka(ctx context.Context, addr string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(addr, ",")...))
	if err != nil {
		return err
	}
	defer cl.Close()
	md, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return err
	}
	if len(md.Brokers) == 0 || md.Controller < 0 {
		return errors.New("no broker or no active controller yet")
	}
	return nil
}

func cassandra(ctx context.Context, addr string) error {
	cl := gocql.NewCluster(strings.Split(addr, ",")...)
	cl.Timeout = 5 * time.Second
	cl.ConnectTimeout = 5 * time.Second
	s, err := cl.CreateSession()
	if err != nil {
		return err
	}
	defer s.Close()
	var v string
	return s.Query("SELECT release_version FROM system.local").WithContext(ctx).Scan(&v)
}

func mongoPing(ctx context.Context, uri string) error {
	cl, err := mongo.Connect(ctx, options.Client().ApplyURI(uri).SetServerSelectionTimeout(3*time.Second))
	if err != nil {
		return err
	}
	defer cl.Disconnect(context.Background())
	return cl.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
}
