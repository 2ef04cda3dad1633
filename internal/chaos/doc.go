// Package chaos is the chaos suite of issue 15: several real `tidemark run`
// processes (capture, sink, both) with the election on, a live workload on
// the MongoDB stand-in, SIGKILLs of every role and of the leader during
// backfill, streaming, a rewind and a repair, Kafka and Cassandra frozen
// (SIGSTOP) while writes go on, and then every row of every target table
// compared with the transformed source by testbed's checker, which does not
// use the reconciler.
//
// The harness (spec, workload, faults, result table) lives in this package's
// non-test files so that it can be unit-tested; TestIntegrationChaos drives
// it against the local stack. See docs/testing.md, "The chaos suite".
package chaos
