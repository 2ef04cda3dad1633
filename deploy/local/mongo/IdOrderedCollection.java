import java.util.NavigableMap;
import java.util.TreeMap;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.ValueComparator;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.MaxKey;
import de.bwaldvogel.mongo.bson.MinKey;

// IdOrderedCollection is mongo-java-server's in-memory collection plus an
// ordered _id index (a tree in BSON comparison order, the order the stand-in
// already sorts by). A find sorted by _id reads the tree from its bound and
// stops at its limit instead of filtering and sorting every document; results
// are those the unindexed path returns (the same matcher filters them).
// Backfill chunks and reconcile scans page this way.
final class IdOrderedCollection extends MemoryCollection {

    // guarded by this (every caller holds the collection's monitor)
    private final TreeMap<Object, Integer> byId = new TreeMap<>(ValueComparator.asc());

    IdOrderedCollection(MongoDatabase database, String name, CollectionOptions options, CursorRegistry cursors) {
        super(database, name, options, cursors);
    }

    @Override
    protected Integer addDocumentInternal(Document document) {
        Integer position = super.addDocumentInternal(document);
        byId.put(document.get("_id"), position);
        return position;
    }

    @Override
    protected void removeDocument(Integer position) {
        Document d = getDocument(position);
        if (d != null && position.equals(byId.get(d.get("_id")))) {
            byId.remove(d.get("_id"));
        }
        super.removeDocument(position);
    }

    @Override
    protected QueryResult matchDocuments(Document query, Document orderBy, int skip, int limit, int batchSize,
                                         Document projection) {
        Boolean ascending = idOrder(orderBy);
        if (ascending == null) {
            return super.matchDocuments(query, orderBy, skip, limit, batchSize, projection);
        }
        return scan(query, null, null, ascending, skip, limit, batchSize, projection);
    }

    // findRange serves find with min/max (hinted on _id): index keys from min
    // (inclusive) to max (exclusive), across BSON types, in _id order.
    synchronized QueryResult findRange(Document query, Object min, Object max, boolean ascending, int skip, int limit,
                                       int batchSize, Document projection) {
        return scan(query == null ? new Document() : query, min, max, ascending, skip, limit, batchSize, projection);
    }

    private QueryResult scan(Document query, Object min, Object max, boolean ascending, int skip, int limit,
                             int batchSize, Document projection) {
        try {
            return scanRange(query, min, max, ascending, skip, limit, batchSize, projection);
        } catch (IllegalArgumentException e) {
            // A bound outside another (say $gt above max): TreeMap refuses
            // the sub-range; nothing can match.
            return matchDocumentsFromStream(query, Stream.empty(), skip, limit, batchSize, null, projection);
        }
    }

    private QueryResult scanRange(Document query, Object min, Object max, boolean ascending, int skip, int limit,
                                  int batchSize, Document projection) {
        NavigableMap<Object, Integer> range = byId;
        if (min != null) {
            range = range.tailMap(min, true);
        }
        if (max != null) {
            range = range.headMap(max, false);
        }
        // A $gt/$gte (ascending) or $lt/$lte (descending) on _id matches only
        // its operand's type: start at the operand and stop after its type.
        Object cond = query.get("_id");
        Object bracket = null;
        if (cond instanceof Document) {
            Document c = (Document) cond;
            Object lo = c.containsKey("$gt") ? c.get("$gt") : c.get("$gte");
            Object hi = c.containsKey("$lt") ? c.get("$lt") : c.get("$lte");
            if (bounded(lo) && (min == null || byId.comparator().compare(lo, min) > 0)) {
                range = range.tailMap(lo, c.containsKey("$gte"));
                bracket = ascending ? lo : bracket;
            }
            if (bounded(hi) && (max == null || byId.comparator().compare(hi, max) < 0)) {
                range = range.headMap(hi, c.containsKey("$lte"));
                bracket = ascending ? bracket : hi;
            }
        }
        Iterable<Integer> positions = ascending ? range.values() : range.descendingMap().values();
        Stream<Document> docs = StreamSupport.stream(positions.spliterator(), false).map(this::getDocument);
        if (bracket != null) {
            Object operand = bracket;
            docs = docs.takeWhile(d -> sameType(d.get("_id"), operand));
        }
        // Already in order: no comparator, so nothing is sorted or buffered
        // before skip and limit.
        return matchDocumentsFromStream(query, docs, skip, limit, batchSize, null, projection);
    }

    private static boolean bounded(Object operand) {
        return operand != null && !(operand instanceof MinKey) && !(operand instanceof MaxKey);
    }

    // sameType is the matcher's rule for whether $gt/$lt can match at all:
    // numbers compare with numbers, everything else with its own type.
    private static boolean sameType(Object value, Object operand) {
        if (value instanceof Number && operand instanceof Number) {
            return true;
        }
        return value != null && value.getClass().equals(operand.getClass());
    }

    // idOrder is true for a sort by {_id: 1}, false for {_id: -1}, null otherwise.
    static Boolean idOrder(Document orderBy) {
        if (orderBy == null || orderBy.size() != 1 || !(orderBy.get("_id") instanceof Number)) {
            return null;
        }
        int dir = ((Number) orderBy.get("_id")).intValue();
        return dir == 1 ? Boolean.TRUE : dir == -1 ? Boolean.FALSE : null;
    }
}
