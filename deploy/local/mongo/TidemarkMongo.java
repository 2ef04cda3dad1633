// A MongoDB wire-protocol server for tidemark's local stack and tests: the
// in-memory backend of de.bwaldvogel:mongo-java-server, extended so that its
// oplog behaves as a replica set's does where tidemark depends on it (see
// docs/testing.md, "The MongoDB stand-in"):
//
//   TidemarkBackend     commands: getMore that waits (awaitData), post-batch
//                       resume tokens, find with min/max/hint on _id, and
//                       tidemarkOplogCap to read or change the oplog's cap
//   OplogCollection     local.oplog.rs as a capped collection
//   CappedOplog,        change streams that continue from their position and
//   ChangeStreamCursor  fail with ChangeStreamHistoryLost (286) past the cap
//   IdOrderedCollection an ordered _id index for finds sorted by _id
//   SampleStage         $sample without a random comparator (it shadows
//                       the library's class of the same name)
//
// It stands in for a replica set because no mongod can be installed on the
// build machines.
//
//   java -cp <classes>:<mongo-java-server jars> TidemarkMongo [host [port]]
//        [--oplog-max-entries N] [--oplog-max-bytes B]
//
// The bounds default to TIDEMARK_MONGO_OPLOG_MAX_ENTRIES and
// TIDEMARK_MONGO_OPLOG_MAX_BYTES, else 0 entries (unbounded) and 256 MiB: the
// entries live as Java objects, several times their BSON size, in a 6 GB heap.
import java.util.concurrent.TimeUnit;

import de.bwaldvogel.mongo.ServerVersion;
import de.bwaldvogel.mongo.wire.MongoDatabaseHandler;
import de.bwaldvogel.mongo.wire.MongoExceptionHandler;
import de.bwaldvogel.mongo.wire.MongoWireMessageEncoder;
import de.bwaldvogel.mongo.wire.MongoWireProtocolHandler;
import de.bwaldvogel.mongo.wire.MongoWireReplyEncoder;

import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.group.ChannelGroup;
import io.netty.channel.group.DefaultChannelGroup;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.nio.NioIoHandler;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.util.concurrent.DefaultEventExecutor;
import io.netty.util.concurrent.DefaultThreadFactory;
import io.netty.util.concurrent.GlobalEventExecutor;

public final class TidemarkMongo {

    static final long DEFAULT_OPLOG_MAX_BYTES = 256L << 20;

    public static void main(String[] args) throws Exception {
        String host = "127.0.0.1";
        int port = 27017;
        long maxEntries = envLong("TIDEMARK_MONGO_OPLOG_MAX_ENTRIES", 0);
        long maxBytes = envLong("TIDEMARK_MONGO_OPLOG_MAX_BYTES", DEFAULT_OPLOG_MAX_BYTES);
        int positional = 0;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--oplog-max-entries":
                    maxEntries = Long.parseLong(args[++i]);
                    break;
                case "--oplog-max-bytes":
                    maxBytes = Long.parseLong(args[++i]);
                    break;
                default:
                    if (positional == 0) {
                        host = args[i];
                    } else if (positional == 1) {
                        port = Integer.parseInt(args[i]);
                    } else {
                        throw new IllegalArgumentException("unexpected argument " + args[i]);
                    }
                    positional++;
            }
        }
        TidemarkBackend backend = new TidemarkBackend(maxEntries, maxBytes);
        backend.version(ServerVersion.MONGO_4_0);
        backend.enableOplog();
        backend.startNoopWriter(envLong("TIDEMARK_MONGO_NOOP_INTERVAL_MS", 10_000));

        // mongo-java-server's MongoServer runs every command on its few netty
        // event-loop threads; a getMore that waits for the oplog would stall
        // every other connection on its loop. Here each connection gets its
        // own command thread, as mongod has, and the loops only do I/O.
        EventLoopGroup boss = new MultiThreadIoEventLoopGroup(1, new DefaultThreadFactory("mongo-boss", true), NioIoHandler.newFactory());
        EventLoopGroup io = new MultiThreadIoEventLoopGroup(2, new DefaultThreadFactory("mongo-io", true), NioIoHandler.newFactory());
        ChannelGroup channels = new DefaultChannelGroup("mongodb-channels", GlobalEventExecutor.INSTANCE);
        DefaultThreadFactory commandThreads = new DefaultThreadFactory("mongo-conn", true);
        Channel server = new ServerBootstrap()
            .group(boss, io)
            .channel(NioServerSocketChannel.class)
            .option(ChannelOption.SO_BACKLOG, 100)
            .childOption(ChannelOption.TCP_NODELAY, Boolean.TRUE)
            .childHandler(new ChannelInitializer<SocketChannel>() {
                // addLast(executor, handler) is deprecated in netty 4.2 but is
                // the way to run a handler off the event loop.
                @Override
                @SuppressWarnings("deprecation")
                public void initChannel(SocketChannel ch) {
                    DefaultEventExecutor commands = new DefaultEventExecutor(commandThreads);
                    ch.pipeline().addLast(new MongoWireReplyEncoder());
                    ch.pipeline().addLast(new MongoWireMessageEncoder());
                    ch.pipeline().addLast(new MongoWireProtocolHandler());
                    ch.pipeline().addLast(commands, new MongoDatabaseHandler(backend, channels));
                    ch.pipeline().addLast(commands, new MongoExceptionHandler());
                    // Unregistered is a channel's last event: only then may
                    // its thread go, or netty cannot deliver the close.
                    ch.pipeline().addLast(commands, new ChannelInboundHandlerAdapter() {
                        @Override
                        public void channelUnregistered(ChannelHandlerContext ctx) {
                            ctx.fireChannelUnregistered();
                            commands.shutdownGracefully(0, 1, TimeUnit.SECONDS);
                        }
                    });
                }
            })
            .bind(host, port).syncUninterruptibly().channel();
        System.out.println("tidemark-mongo listening on " + host + ":" + port + " (oplog cap: "
            + (maxEntries > 0 ? maxEntries + " entries, " : "") + (maxBytes > 0 ? maxBytes + " bytes" : "no byte bound") + ")");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.close().syncUninterruptibly();
            channels.close().syncUninterruptibly();
            io.shutdownGracefully(0, 2, TimeUnit.SECONDS).syncUninterruptibly();
            boss.shutdownGracefully(0, 2, TimeUnit.SECONDS).syncUninterruptibly();
        }));
        server.closeFuture().sync();
    }

    private static long envLong(String name, long fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : Long.parseLong(v);
    }
}
