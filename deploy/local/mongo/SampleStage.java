package de.bwaldvogel.mongo.backend.aggregation.stage;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.exception.MongoServerError;

// SampleStage replaces mongo-java-server 1.47.0's $sample, which this file
// shadows: the launcher's classes come before the jars on the class path.
//
// The original sorts the stream with Comparator.comparingDouble(d ->
// random.nextDouble()), a comparator that answers differently each time it
// is asked about the same pair. TimSort checks the contract on inputs of 32
// or more elements and, when it catches the contradiction, throws
// IllegalArgumentException "Comparison method violates its general
// contract!", which reached tidemark's rollout validator as a failed
// aggregate. This one draws a uniform sample by reservoir sampling
// (Algorithm R: every document ends up in the sample with probability
// size/n) and shuffles it, since a real $sample returns its documents in
// random order.
public class SampleStage implements AggregationStage {

    private final int size;

    public SampleStage(Object sample) {
        if (!(sample instanceof Document)) {
            throw new MongoServerError(28745, "the $sample stage specification must be an object");
        }
        Document spec = (Document) sample;
        Object sizeValue = spec.getOrMissing("size");
        if (sizeValue instanceof Missing) {
            throw new MongoServerError(28749, "$sample stage must specify a size");
        }
        if (!(sizeValue instanceof Number)) {
            throw new MongoServerError(28746, "size argument to $sample must be a number");
        }
        this.size = ((Number) sizeValue).intValue();
        if (this.size < 0) {
            throw new MongoServerError(28747, "size argument to $sample must not be negative");
        }
        for (String key : spec.keySet()) {
            if (!key.equals("size")) {
                throw new MongoServerError(28748, "unrecognized option to $sample: " + key);
            }
        }
    }

    @Override
    public String name() {
        return "$sample";
    }

    @Override
    public Stream<Document> apply(Stream<Document> stream) {
        SplittableRandom random = new SplittableRandom();
        List<Document> reservoir = new ArrayList<>(Math.min(size, 1024));
        long seen = 0;
        for (Document d : (Iterable<Document>) stream::iterator) {
            seen++;
            if (reservoir.size() < size) {
                reservoir.add(d);
                continue;
            }
            long j = random.nextLong(seen);
            if (j < size) {
                reservoir.set((int) j, d);
            }
        }
        Collections.shuffle(reservoir, new java.util.Random(random.nextLong()));
        return reservoir.stream();
    }
}
