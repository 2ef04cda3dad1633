// Package standin holds the integration tests of the MongoDB stand-in in
// deploy/local/mongo: that its oplog costs what a replica set's costs (a
// getMore's cost independent of the oplog's length, no CPU on an idle
// stream, waits honouring maxAwaitTimeMS), that it loses history as a capped
// oplog does (ChangeStreamHistoryLost, code 286), and that its ordered _id
// index returns what the unindexed path returns. Each test starts its own
// stand-in (testbed.StartStandin): capping or timing the shared one would
// disturb every other test that uses it.
package standin
