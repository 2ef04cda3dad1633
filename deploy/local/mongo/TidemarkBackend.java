import java.util.List;

import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.Cursor;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;
import de.bwaldvogel.mongo.oplog.Oplog;

import io.netty.channel.Channel;

// TidemarkBackend is mongo-java-server's in-memory backend with a capped
// oplog, change-stream cursors that keep their position and wait for new
// entries (awaitData), post-batch resume tokens, find with min/max/hint on
// _id, and one admin command to read or change the oplog's cap at run time:
//
//   db.adminCommand({tidemarkOplogCap: 1, maxEntries: N, maxBytes: B})
//
// (either bound optional; 0 means unbounded; without both it only reports).
final class TidemarkBackend extends MemoryBackend {

    // The server's default await for a tailable awaitData getMore without
    // maxTimeMS (mongod: 1 second).
    static final long DEFAULT_AWAIT_MILLIS = 1000;

    private final long oplogMaxEntries;
    private final long oplogMaxBytes;

    TidemarkBackend(long oplogMaxEntries, long oplogMaxBytes) {
        this.oplogMaxEntries = oplogMaxEntries;
        this.oplogMaxBytes = oplogMaxBytes;
    }

    long oplogMaxEntries() { return oplogMaxEntries; }

    long oplogMaxBytes() { return oplogMaxBytes; }

    @Override
    public MemoryDatabase openOrCreateDatabase(String name) {
        return new TidemarkDatabase(name, getCursorRegistry(), this);
    }

    @Override
    protected Oplog createOplog() {
        MongoDatabase local = resolveDatabase("local");
        MongoCollection<?> c = local.resolveCollection(OPLOG_COLLECTION_NAME, false);
        if (c == null) {
            // Oplog entries have no _id, as on a replica set.
            c = local.createCollectionOrThrowIfExists(OPLOG_COLLECTION_NAME, CollectionOptions.withoutIdField());
        }
        OplogCollection oplog = (OplogCollection) c;
        if (oplog.isEmpty()) {
            // A replica set's oplog starts with the no-op of its initiation;
            // without it every stream opened before the first write would
            // look older than the oplog.
            oplog.addDocument(new Document("ts", new BsonTimestamp(java.time.Instant.now(getClock()), 0))
                .append("t", 1L).append("h", 0L).append("v", 2L).append("op", "n").append("ns", "")
                .append("wall", java.time.Instant.now(getClock())).append("o", new Document("msg", "initiating set")));
        }
        return new CappedOplog(this, oplog, getCursorRegistry());
    }

    // startNoopWriter writes a no-op oplog entry every interval in which
    // nothing else was written, as a replica set's primary does
    // (periodicNoopIntervalSecs, 10 s): an idle source's cluster time, and the
    // post-batch resume tokens of its change streams, keep up with its clock.
    // tidemark relies on that to give a repair a version above a target
    // write made moments before (see capture.Request.NotBefore).
    void startNoopWriter(long intervalMillis) {
        if (intervalMillis <= 0) {
            return;
        }
        java.util.concurrent.ScheduledExecutorService ses = java.util.concurrent.Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "mongo-noop");
            t.setDaemon(true);
            return t;
        });
        ses.scheduleWithFixedDelay(() -> {
            try {
                OplogCollection o = oplogCollection();
                long newestSeconds = o.newestTs() >>> 32;
                long now = java.time.Instant.now(getClock()).getEpochSecond();
                if ((now - newestSeconds) * 1000 < intervalMillis) {
                    return;
                }
                // OplogCollection stamps the ts (this second, the next ordinal).
                o.addDocument(new Document("ts", new BsonTimestamp(java.time.Instant.now(getClock()), 0)).append("t", 1L)
                    .append("h", 0L).append("v", 2L).append("op", "n").append("ns", "")
                    .append("wall", java.time.Instant.now(getClock())).append("o", new Document("msg", "periodic noop")));
            } catch (RuntimeException e) {
                System.err.println("tidemark-mongo: periodic noop: " + e);
            }
        }, intervalMillis, Math.max(100, intervalMillis / 10), java.util.concurrent.TimeUnit.MILLISECONDS);
    }

    private OplogCollection oplogCollection() {
        if (!(oplog instanceof CappedOplog)) {
            throw new MongoServerError(20, "IllegalOperation", "the oplog is not enabled");
        }
        return ((CappedOplog) oplog).collection();
    }

    @Override
    public Document handleCommand(Channel channel, String db, String command, Document query) {
        if (command.equalsIgnoreCase("tidemarkOplogCap")) {
            return oplogCap(query);
        }
        if (command.equals("find") && (query.containsKey("min") || query.containsKey("max") || query.containsKey("hint"))) {
            Document r = findByIdIndex(db, query);
            if (r != null) {
                return r;
            }
        }
        Document response = super.handleCommand(channel, db, command, query);
        if (command.equals("aggregate")) {
            addPostBatchResumeToken(response);
        }
        return response;
    }

    private Document oplogCap(Document query) {
        OplogCollection o = oplogCollection();
        if (query.containsKey("maxEntries") || query.containsKey("maxBytes")) {
            long entries = ((Number) query.getOrDefault("maxEntries", o.maxEntries())).longValue();
            long bytes = ((Number) query.getOrDefault("maxBytes", o.maxBytes())).longValue();
            o.setCap(entries, bytes);
        }
        return new Document("maxEntries", o.maxEntries()).append("maxBytes", o.maxBytes())
            .append("entries", (long) o.count()).append("bytes", o.bytes())
            .append("oldest", new BsonTimestamp(o.oldestTs())).append("newest", new BsonTimestamp(o.newestTs()))
            .append("ok", 1.0);
    }

    private void addPostBatchResumeToken(Document response) {
        Object c = response.get("cursor");
        if (!(c instanceof Document)) {
            return;
        }
        Document cursor = (Document) c;
        long id = ((Number) cursor.getOrDefault("id", 0L)).longValue();
        if (id == 0) {
            return;
        }
        Cursor found = getCursorRegistry().getCursor(id);
        if (found instanceof ChangeStreamCursor) {
            cursor.put("postBatchResumeToken", ((ChangeStreamCursor) found).resumeToken());
        }
    }

    // handleGetMore waits, for a change stream, until its batch has an event
    // or maxTimeMS (default 1 s) passes, as a tailable awaitData cursor does;
    // every reply carries the post-batch resume token.
    @Override
    protected Document handleGetMore(String db, String command, Document query) {
        long id = ((Number) query.get(command)).longValue();
        Cursor cursor = getCursorRegistry().getCursor(id);
        if (!(cursor instanceof ChangeStreamCursor)) {
            return super.handleGetMore(db, command, query);
        }
        ChangeStreamCursor cs = (ChangeStreamCursor) cursor;
        int batchSize = ((Number) query.getOrDefault("batchSize", 0)).intValue();
        long await = ((Number) query.getOrDefault("maxTimeMS", DEFAULT_AWAIT_MILLIS)).longValue();
        long deadline = System.nanoTime() + await * 1_000_000L;
        List<Document> batch = cs.takeDocuments(batchSize);
        while (batch.isEmpty() && !cs.isEmpty() && System.nanoTime() < deadline) {
            try {
                cs.oplog().awaitAppend(cs.position(), deadline);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
            batch = cs.takeDocuments(batchSize);
        }
        if (cs.isEmpty()) {
            getCursorRegistry().remove(cs);
        }
        Document c = new Document("id", cs.isEmpty() ? 0L : id)
            .append("ns", db + "." + query.get("collection"))
            .append("nextBatch", batch)
            .append("postBatchResumeToken", cs.resumeToken());
        return new Document("cursor", c).append("ok", 1.0);
    }

    // findByIdIndex answers a find that names the _id index (hint {_id: 1} or
    // "_id_") with optional min (inclusive) and max (exclusive) bounds, as
    // mongod's index bounds do. Other hints are left to the default path,
    // which ignores them; min/max without an _id hint is refused like mongod.
    private Document findByIdIndex(String db, Document query) {
        Object hint = query.get("hint");
        boolean idHint = "_id_".equals(hint)
            || (hint instanceof Document && ((Document) hint).size() == 1 && ((Document) hint).get("_id") instanceof Number);
        boolean bounded = query.containsKey("min") || query.containsKey("max");
        if (!idHint) {
            if (bounded) {
                throw new MongoServerError(51173, "BadValue",
                    "When using min()/max() a hint of which index to use must be provided (the stand-in has only {_id: 1})");
            }
            return null;
        }
        MongoDatabase database = resolveDatabase(db);
        String name = (String) query.get("find");
        MongoCollection<?> c = database.resolveCollection(name, false);
        String ns = db + "." + name;
        if (!(c instanceof IdOrderedCollection)) {
            if (c == null) {
                return new Document("cursor", new Document("id", 0L).append("ns", ns).append("firstBatch", List.of()))
                    .append("ok", 1.0);
            }
            return null;
        }
        Object min = bound(query.get("min"), "min");
        Object max = bound(query.get("max"), "max");
        Document sort = (Document) query.get("sort");
        Boolean asc = sort == null || sort.isEmpty() ? Boolean.TRUE : IdOrderedCollection.idOrder(sort);
        if (asc == null) {
            if (bounded) {
                throw new MongoServerError(2, "BadValue", "the stand-in supports min/max only with no sort or a sort on _id");
            }
            return null;
        }
        int skip = ((Number) query.getOrDefault("skip", 0)).intValue();
        int limit = ((Number) query.getOrDefault("limit", 0)).intValue();
        int batchSize = ((Number) query.getOrDefault("batchSize", 0)).intValue();
        QueryResult r = ((IdOrderedCollection) c).findRange((Document) query.get("filter"), min, max, asc, skip, limit,
            batchSize, (Document) query.get("projection"));
        return new Document("cursor", new Document("id", r.getCursorId()).append("ns", ns)
            .append("firstBatch", r.collectDocuments())).append("ok", 1.0);
    }

    private static Object bound(Object spec, String which) {
        if (spec == null) {
            return null;
        }
        Document d = (Document) spec;
        if (d.size() != 1 || !d.containsKey("_id")) {
            throw new MongoServerError(51174, "BadValue", which + " must name exactly the hinted index's key, _id");
        }
        return d.get("_id");
    }
}
