import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.AbstractCursor;
import de.bwaldvogel.mongo.backend.QueryParameters;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

// ChangeStreamCursor is one collection's change stream over the capped oplog.
// It keeps its position (the ts of the last oplog entry it read, whether or
// not the entry was for its collection), so each batch reads only what was
// appended since: a getMore costs what its batch costs, not the oplog's length.
// Events have the shape the MongoDB manual documents (ns, documentKey with
// only _id, updateDescription, fullDocument only for inserts, replaces and
// updateLookup) rather than mongo-java-server's own.
final class ChangeStreamCursor extends AbstractCursor {

    static final int HISTORY_LOST = 286;

    private final OplogCollection oplog;
    private final MongoBackend backend;
    private final String db;
    private final String coll;
    private final String ns;
    private final boolean updateLookup;
    private final Aggregation aggregation;
    // position is the ts of the last oplog entry read; inclusive only before
    // the first read of a stream opened with startAtOperationTime.
    private volatile long position;
    private boolean inclusive;
    private boolean invalidated;
    private boolean exhausted;

    ChangeStreamCursor(long id, OplogCollection oplog, MongoBackend backend, String namespace, boolean updateLookup,
                       Aggregation aggregation, long position, boolean inclusive) {
        super(id);
        this.oplog = oplog;
        this.backend = backend;
        this.ns = namespace;
        int dot = namespace.indexOf('.');
        this.db = namespace.substring(0, dot);
        this.coll = namespace.substring(dot + 1);
        this.updateLookup = updateLookup;
        this.aggregation = aggregation;
        this.position = position;
        this.inclusive = inclusive;
        checkHistory();
    }

    long position() { return position; }

    OplogCollection oplog() { return oplog; }

    // checkHistory fails with the real server's error once the oplog no
    // longer reaches back to the position: its oldest entry is newer (or,
    // for an emptied oplog, entries after the position were removed). The
    // stream cannot continue without a gap.
    private void checkHistory() {
        long oldest = oplog.oldestTs();
        boolean lost = oldest != 0
            ? Long.compareUnsigned(oldest, position) > 0
            : Long.compareUnsigned(oplog.trimmedThrough(), position) > 0
                || (inclusive && oplog.trimmedThrough() == position && position != 0);
        if (lost) {
            throw new MongoServerError(HISTORY_LOST, "ChangeStreamHistoryLost",
                "Resume of change stream was not possible, as the resume point may no longer be in the oplog. "
                    + "resume point " + new BsonTimestamp(position) + ", oldest entry " + new BsonTimestamp(oldest));
        }
    }

    @Override
    public boolean isEmpty() {
        return exhausted;
    }

    // takeDocuments returns up to n events (all when n <= 0) after the
    // position and moves the position past every entry it read.
    @Override
    public synchronized List<Document> takeDocuments(int n) {
        if (invalidated) {
            exhausted = true;
            return List.of(invalidate(position));
        }
        checkHistory();
        long[] read = {position};
        boolean[] any = {false};
        Stream<Document> events = oplog.after(position, inclusive)
            .peek(e -> { read[0] = ts(e); any[0] = true; })
            .filter(this::concerns)
            .flatMap(this::toEvents);
        Stream<Document> out = aggregation.runStagesAsStream(events);
        if (n > 0) {
            out = out.limit(n);
        }
        List<Document> batch = new ArrayList<>();
        out.forEachOrdered(batch::add);
        // An entry trimmed while it was read: the batch may have a gap.
        checkHistory();
        if (any[0]) {
            position = read[0];
            inclusive = false;
        }
        return batch;
    }

    // resumeToken is the post-batch resume token: the position, as a token
    // a later resumeAfter continues from.
    Document resumeToken() {
        return token(position);
    }

    static Document token(long ts) {
        return new Document("_data", Long.toHexString(ts));
    }

    private boolean concerns(Document e) {
        String entryNs = (String) e.get("ns");
        if (ns.equals(entryNs)) {
            return true;
        }
        if (!entryNs.equals(db + ".$cmd")) {
            return false;
        }
        Document o = (Document) e.get("o");
        return coll.equals(o.get("drop"));
    }

    private Stream<Document> toEvents(Document e) {
        long ts = ts(e);
        Document event = new Document("_id", token(ts));
        String op = (String) e.get("op");
        Document o = (Document) e.get("o");
        if ("c".equals(op)) {
            // A dropped collection ends its stream: drop, then invalidate.
            invalidated = true;
            event.append("operationType", "drop").append("clusterTime", new BsonTimestamp(ts)).append("ns", nsDoc());
            return Stream.of(event);
        }
        switch (op) {
            case "i":
                return Stream.of(event.append("operationType", "insert").append("clusterTime", new BsonTimestamp(ts))
                    .append("ns", nsDoc()).append("documentKey", new Document("_id", o.get("_id")))
                    .append("fullDocument", o));
            case "d":
                return Stream.of(event.append("operationType", "delete").append("clusterTime", new BsonTimestamp(ts))
                    .append("ns", nsDoc()).append("documentKey", new Document("_id", o.get("_id"))));
            case "u":
                Object id = ((Document) e.get("o2")).get("_id");
                event.append("operationType", isReplacement(o) ? "replace" : "update")
                    .append("clusterTime", new BsonTimestamp(ts)).append("ns", nsDoc())
                    .append("documentKey", new Document("_id", id));
                if (isReplacement(o)) {
                    Document full = new Document("_id", id);
                    o.forEach((k, v) -> { if (!k.equals("_id")) full.put(k, v); });
                    event.append("fullDocument", full);
                } else {
                    event.append("updateDescription", updateDescription(o));
                    if (updateLookup) {
                        // As of the lookup, not of the event; null once deleted.
                        event.append("fullDocument", lookup(id));
                    }
                }
                return Stream.of(event);
            default:
                return Stream.empty();
        }
    }

    private Document invalidate(long ts) {
        return new Document("_id", token(ts)).append("operationType", "invalidate")
            .append("clusterTime", new BsonTimestamp(ts));
    }

    private Document nsDoc() {
        return new Document("db", db).append("coll", coll);
    }

    private static boolean isReplacement(Document update) {
        return update.keySet().stream().noneMatch(k -> k.startsWith("$"));
    }

    // updateDescription is what the update operators name: $set's fields as
    // updated, $unset's as removed. Other operators ($inc, $push, ...) are
    // not described: the stand-in's oplog keeps the operators, not their result.
    private static Document updateDescription(Document update) {
        Document updated = new Document();
        List<String> removed = new ArrayList<>();
        update.forEach((operator, fields) -> {
            if (!(fields instanceof Document)) {
                return;
            }
            if ("$unset".equals(operator)) {
                removed.addAll(((Document) fields).keySet());
            } else if ("$set".equals(operator)) {
                updated.putAll((Document) fields);
            }
        });
        return new Document("updatedFields", updated).append("removedFields", removed);
    }

    // lookup finds the document by _id through the collection's unique _id
    // index, as updateLookup does on a real server.
    private Document lookup(Object id) {
        MongoDatabase database = backend.resolveDatabase(db);
        MongoCollection<?> c = database == null ? null : database.resolveCollection(coll, false);
        if (c == null) {
            return null;
        }
        for (Document d : c.handleQuery(new QueryParameters(new Document("_id", id), 0, 1))) {
            return d;
        }
        return null;
    }

    private static long ts(Document entry) {
        return ((BsonTimestamp) entry.get("ts")).getValue();
    }
}
