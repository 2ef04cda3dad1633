import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.aggregation.Aggregation;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.oplog.CollectionBackedOplog;

// CappedOplog keeps mongo-java-server's oplog writer (the entries it appends
// for inserts, updates, deletes and drops) and replaces its cursor: each
// change stream is a ChangeStreamCursor over the capped OplogCollection.
final class CappedOplog extends CollectionBackedOplog {

    private final OplogCollection oplog;
    private final MongoBackend backend;
    private final CursorRegistry cursors;

    CappedOplog(MongoBackend backend, OplogCollection oplog, CursorRegistry cursors) {
        super(backend, asDocuments(oplog), cursors);
        this.oplog = oplog;
        this.backend = backend;
        this.cursors = cursors;
    }

    OplogCollection collection() { return oplog; }

    // The oplog writer only adds documents: the collection's position type
    // (Integer slots) does not matter to it.
    @SuppressWarnings("unchecked")
    private static MongoCollection<Document> asDocuments(OplogCollection c) {
        return (MongoCollection<Document>) (MongoCollection<?>) c;
    }

    // createCursor starts where the stream asks: after a resume token
    // (startAfter, resumeAfter), at an operation time, or after the newest
    // entry. A start point whose history was trimmed fails with code 286.
    @Override
    public Cursor createCursor(Document changeStream, String namespace, Aggregation aggregation) {
        Document token = (Document) changeStream.get("startAfter");
        if (token == null) {
            token = (Document) changeStream.get("resumeAfter");
        }
        BsonTimestamp at = (BsonTimestamp) changeStream.get("startAtOperationTime");
        long position;
        boolean inclusive = false;
        if (token != null) {
            position = Long.parseUnsignedLong((String) token.get("_data"), 16);
        } else if (at != null) {
            position = at.getValue();
            inclusive = true;
        } else {
            position = oplog.newestTs();
        }
        boolean lookup = "updateLookup".equals(changeStream.get("fullDocument"));
        ChangeStreamCursor cursor = new ChangeStreamCursor(cursors.generateCursorId(), oplog, backend, namespace, lookup,
            aggregation, position, inclusive);
        cursors.add(cursor);
        return cursor;
    }
}
