import java.util.Map;
import java.util.NavigableMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.DocumentWithPosition;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;

// OplogCollection is local.oplog.rs as a capped collection: entries are kept
// in insertion (= ts) order, never reuse a slot (so $natural order is the
// oplog's order, as on a replica set), and the oldest are dropped once the
// entry or byte bound is passed, which is how a real oplog rolls over.
// Change-stream cursors read it by ts from their own position (after) and
// wait for appends (awaitAppend) instead of rescanning it.
//
// MemoryCollection's own list is left empty: every storage method it has is
// overridden here. Callers hold the collection's monitor (the synchronized
// methods of AbstractSynchronizedMongoCollection) for writes; cursors read the
// concurrent maps without it.
final class OplogCollection extends MemoryCollection {

    private final ConcurrentSkipListMap<Integer, Document> bySlot = new ConcurrentSkipListMap<>();
    private final ConcurrentSkipListMap<Long, Integer> slotByTs = new ConcurrentSkipListMap<>();
    // bytes of each slot's BSON, for the byte bound; guarded by the monitor.
    private final Map<Integer, Integer> sizeBySlot = new java.util.HashMap<>();
    private int nextSlot;
    // T and I of the newest entry's ts; guarded by the monitor.
    private int lastT;
    private int lastI;
    // entries kept (ConcurrentSkipListMap.size() counts by walking the map).
    private volatile int entries;
    private Integer lastAdded;
    private long bytes;
    private volatile long maxEntries;
    private volatile long maxBytes;
    // ts of the newest entry ever trimmed; 0 while nothing was. A position
    // older than it has lost history.
    private volatile long trimmedThrough;

    private final ReentrantLock appendLock = new ReentrantLock();
    private final Condition appended = appendLock.newCondition();

    OplogCollection(MongoDatabase database, String name, CollectionOptions options, CursorRegistry cursors,
                    long maxEntries, long maxBytes) {
        super(database, name, options, cursors);
        this.maxEntries = maxEntries;
        this.maxBytes = maxBytes;
    }

    // setCap changes the bounds at run time and trims to them at once.
    synchronized void setCap(long maxEntries, long maxBytes) {
        this.maxEntries = maxEntries;
        this.maxBytes = maxBytes;
        trim();
    }

    long maxEntries() { return maxEntries; }

    long maxBytes() { return maxBytes; }

    synchronized long bytes() { return bytes; }

    long trimmedThrough() { return trimmedThrough; }

    // newestTs is the ts of the newest entry, or 0 for an empty oplog.
    long newestTs() {
        Map.Entry<Long, Integer> e = slotByTs.lastEntry();
        return e == null ? 0 : e.getKey();
    }

    // oldestTs is the ts of the oldest entry kept, or 0 for an empty oplog.
    long oldestTs() {
        Map.Entry<Long, Integer> e = slotByTs.firstEntry();
        return e == null ? 0 : e.getKey();
    }

    // after streams the entries with ts > ts (>= when inclusive), oldest first.
    // It reads a live view: entries appended meanwhile may appear, trimmed ones
    // may vanish, neither is an error.
    Stream<Document> after(long ts, boolean inclusive) {
        return slotByTs.tailMap(ts, inclusive).values().stream()
            .map(bySlot::get)
            .filter(d -> d != null);
    }

    // awaitAppend blocks until the newest entry is newer than ts or the
    // deadline (System.nanoTime) passes; it returns at once if it already is.
    // Idle waiting costs no CPU: it parks on a condition signalled per append.
    void awaitAppend(long ts, long deadlineNanos) throws InterruptedException {
        appendLock.lock();
        try {
            while (newestTs() <= ts) {
                long left = deadlineNanos - System.nanoTime();
                if (left <= 0) {
                    return;
                }
                appended.awaitNanos(left);
            }
        } finally {
            appendLock.unlock();
        }
    }

    // addDocumentInternal stamps the entry's ts as a replica set does: T the
    // second, I counting from 1 within it. (mongo-java-server's clock never
    // resets I, so after a million operations T*1e6+I would stop ordering.)
    // Entries are added under the monitor, so ts strictly increases.
    @Override
    protected Integer addDocumentInternal(Document document) {
        int t = ((BsonTimestamp) document.get("ts")).getTime();
        if (Integer.compareUnsigned(t, lastT) > 0) {
            lastT = t;
            lastI = 0;
        }
        document.put("ts", new BsonTimestamp(((long) lastT << 32) | (++lastI & 0xffffffffL)));
        int slot = nextSlot++;
        bySlot.put(slot, document);
        entries++;
        slotByTs.put(ts(document), slot);
        lastAdded = slot;
        return slot;
    }

    // updateDataSize follows each add with the entry's BSON size (and each
    // removal with minus it); the add's is kept for the byte bound, then the
    // oplog is trimmed and waiting cursors are woken.
    @Override
    protected void updateDataSize(int delta) {
        bytes += delta;
        if (delta > 0 && lastAdded != null) {
            sizeBySlot.put(lastAdded, delta);
            lastAdded = null;
            trim();
            appendLock.lock();
            try {
                appended.signalAll();
            } finally {
                appendLock.unlock();
            }
        }
    }

    @Override
    protected int getDataSize() {
        return (int) Math.min(Integer.MAX_VALUE, bytes);
    }

    private void trim() {
        while (!bySlot.isEmpty() && ((maxEntries > 0 && entries > maxEntries) || (maxBytes > 0 && bytes > maxBytes))) {
            Map.Entry<Integer, Document> oldest = bySlot.firstEntry();
            Integer size = sizeBySlot.get(oldest.getKey());
            bytes -= size == null ? 0 : size;
            removeDocument(oldest.getKey());
        }
    }

    private static long ts(Document entry) {
        return ((BsonTimestamp) entry.get("ts")).getValue();
    }

    // matchDocuments answers finds on the oplog in $natural order without
    // copying it: a ts bound ($gt/$gte/$eq) starts the scan there.
    @Override
    protected QueryResult matchDocuments(Document query, Document orderBy, int skip, int limit, int batchSize,
                                         Document projection) {
        NavigableMap<Integer, Document> docs = bySlot;
        Object tsCond = query == null ? null : query.get("ts");
        if (tsCond instanceof Document) {
            Document c = (Document) tsCond;
            Object lo = c.containsKey("$gt") ? c.get("$gt") : c.get("$gte");
            if (lo instanceof BsonTimestamp) {
                Map.Entry<Long, Integer> first = slotByTs.ceilingEntry(((BsonTimestamp) lo).getValue());
                docs = first == null ? new ConcurrentSkipListMap<>() : bySlot.tailMap(first.getValue(), true);
            }
        } else if (tsCond instanceof BsonTimestamp) {
            Integer slot = slotByTs.get(((BsonTimestamp) tsCond).getValue());
            docs = slot == null ? new ConcurrentSkipListMap<>() : bySlot.subMap(slot, true, slot, true);
        }
        Iterable<Document> ordered = isNaturalDescending(orderBy) ? docs.descendingMap().values() : docs.values();
        Stream<Document> stream = java.util.stream.StreamSupport.stream(ordered.spliterator(), false);
        return matchDocumentsFromStream(stream, query, orderBy, skip, limit, batchSize, projection);
    }

    // Entries have no _id and the collection no _id index, but projections
    // need an id field name (mongo-java-server writes a null key otherwise).
    @Override
    protected String getIdField() {
        return "_id";
    }

    @Override
    public synchronized int count() {
        return entries;
    }

    @Override
    public synchronized boolean isEmpty() {
        return bySlot.isEmpty();
    }

    @Override
    protected Integer findDocumentPosition(Document document) {
        Object ts = document.get("ts");
        return ts instanceof BsonTimestamp ? slotByTs.get(((BsonTimestamp) ts).getValue()) : null;
    }

    @Override
    protected Stream<DocumentWithPosition<Integer>> streamAllDocumentsWithPosition() {
        return bySlot.entrySet().stream().map(e -> new DocumentWithPosition<>(e.getValue(), e.getKey()));
    }

    // removeDocument also serves deletes by clients (testbed's old trim): the
    // newest ts removed that way counts as trimmed, as history is gone.
    @Override
    protected void removeDocument(Integer slot) {
        Document d = bySlot.remove(slot);
        sizeBySlot.remove(slot);
        if (d != null) {
            entries--;
            long ts = ts(d);
            slotByTs.remove(ts);
            if (ts > trimmedThrough) {
                trimmedThrough = ts;
            }
        }
    }

    @Override
    protected Document getDocument(Integer slot) {
        return bySlot.get(slot);
    }
}
