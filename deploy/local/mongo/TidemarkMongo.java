// A MongoDB wire-protocol server for tidemark's local stack and tests: the
// in-memory backend of de.bwaldvogel:mongo-java-server with its oplog enabled,
// which is what gives it change streams. It stands in for a replica set because
// no mongod can be installed on the build machines (see deploy/local/README.md
// for what it does not emulate).
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.ServerVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

public final class TidemarkMongo {
    public static void main(String[] args) throws Exception {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 27017;
        MemoryBackend backend = new MemoryBackend();
        backend.version(ServerVersion.MONGO_4_0);
        MongoServer server = new MongoServer(backend);
        server.enableOplog();
        server.bind(host, port);
        System.out.println("tidemark-mongo listening on " + host + ":" + port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        Thread.currentThread().join();
    }
}
