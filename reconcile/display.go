package reconcile

// JSONValue makes a value scanned from Cassandra or converted by the
// transform readable in JSON, as reports show it (decimals and varints as
// strings, blobs in hex, UUIDs in their text form).
func JSONValue(v any) any { return jsonValue(v) }
