import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;

// TidemarkDatabase picks the collection class: the capped oplog for
// local.oplog.rs, an _id-ordered collection for every collection keyed by _id.
final class TidemarkDatabase extends MemoryDatabase {

    private final TidemarkBackend backend;

    TidemarkDatabase(String name, CursorRegistry cursors, TidemarkBackend backend) {
        super(name, cursors);
        this.backend = backend;
    }

    @Override
    protected MemoryCollection openOrCreateCollection(String name, CollectionOptions options) {
        // Called from MemoryDatabase's constructor too (its system
        // collections), before backend is set: those are never the oplog.
        if (backend != null && "local".equals(getDatabaseName()) && "oplog.rs".equals(name)) {
            return new OplogCollection(this, name, options, cursorRegistry, backend.oplogMaxEntries(), backend.oplogMaxBytes());
        }
        if ("_id".equals(options.getIdField())) {
            return new IdOrderedCollection(this, name, options, cursorRegistry);
        }
        return super.openOrCreateCollection(name, options);
    }
}
