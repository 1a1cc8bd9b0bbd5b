package dev.riffle.compat;

import java.nio.file.Files;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.LongDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Kafka Streams word count against Riffle: {@code WordCount BOOTSTRAP REPLICATION_FACTOR
 * GUARANTEE [LINES]}. Produces a text, counts its words with a topology that needs an
 * internal repartition topic and a compacted changelog topic, and checks that the latest
 * count per word in the output topic is the right one. Exits 0 and prints PASS, or fails.
 *
 * <p>With LINES, the text is that many generated lines, produced at a steady pace; once
 * half of them are in and counts come out it prints {@code HALFWAY} (the caller then kills
 * a broker). With exactly_once_v2 every word's updates in the output, read committed, must
 * then be 1, 2, ... n exactly: no update lost, none repeated.
 */
public final class WordCount {
    private static final String TEXT = """
            the quick brown fox jumps over the lazy dog
            the dog barks and the fox runs
            a lazy afternoon for a quick fox
            """;

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        short rf = Short.parseShort(args[1]);
        String guarantee = args[2];
        int generated = args.length > 3 ? Integer.parseInt(args[3]) : 0;
        String id = "wc-" + UUID.randomUUID().toString().substring(0, 8);
        String input = id + "-lines";
        String output = id + "-counts";
        System.out.println("  application " + id);
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(input, 3, rf), new NewTopic(output, 3, rf)))
                    .all().get();

            Properties pp = new Properties();
            pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 120_000);
            List<String> lines = generated > 0 ? generate(generated) : TEXT.lines().toList();
            KafkaProducer<String, String> producer = new KafkaProducer<>(pp);
            // Generated lines are produced while the topology runs (below).
            int upfront = generated > 0 ? 0 : lines.size();
            for (int i = 0; i < upfront; i++) {
                producer.send(new ProducerRecord<>(input, "line-" + i, lines.get(i))).get();
            }
            Map<String, Long> expected = lines.stream()
                    .flatMap(l -> Arrays.stream(l.split("\\W+")))
                    .filter(w -> !w.isEmpty())
                    .collect(Collectors.groupingBy(w -> w, Collectors.counting()));

            Properties sp = new Properties();
            sp.put(StreamsConfig.APPLICATION_ID_CONFIG, id);
            sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
            sp.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, (int) rf);
            sp.put(StreamsConfig.STATE_DIR_CONFIG,
                    Files.createTempDirectory("riffle-streams").toString());
            sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
            sp.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
            sp.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
            sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
            sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
            StreamsBuilder b = new StreamsBuilder();
            b.<String, String>stream(input)
                    .flatMapValues(l -> Arrays.asList(l.toLowerCase(Locale.ROOT).split("\\W+")))
                    .filter((k, w) -> !w.isEmpty())
                    .groupBy((k, w) -> w)
                    .count()
                    .toStream()
                    .to(output, Produced.with(Serdes.String(), Serdes.Long()));

            Map<String, Long> got = new HashMap<>();
            Map<String, List<Long>> updates = new HashMap<>();
            try (KafkaStreams streams = new KafkaStreams(b.build(), sp)) {
                streams.setUncaughtExceptionHandler(e -> {
                    e.printStackTrace();
                    System.exit(1);
                    return null;
                });
                streams.start();
                Properties cp = new Properties();
                cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
                cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
                // Exactly-once output is read as committed transactions only.
                cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG,
                        guarantee.startsWith("exactly_once") ? "read_committed" : "read_uncommitted");
                cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
                cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class.getName());
                try (KafkaConsumer<String, Long> c = new KafkaConsumer<String, Long>(cp)) {
                    // Assigned, not subscribed: a group would re-read from its last commit
                    // after a coordinator failover, and every update must be seen once.
                    List<org.apache.kafka.common.TopicPartition> outs = java.util.stream.IntStream
                            .range(0, 3).mapToObj(p -> new org.apache.kafka.common.TopicPartition(output, p))
                            .toList();
                    c.assign(outs);
                    c.seekToBeginning(outs);
                    java.util.function.Consumer<Duration> poll = d -> c.poll(d).forEach(r -> {
                        got.put(r.key(), r.value());
                        updates.computeIfAbsent(r.key(), k -> new java.util.ArrayList<>())
                                .add(r.value());
                    });
                    // Paced: about 20 s of input, so a broker dies while it flows.
                    long pause = Math.max(1, 20_000L / Math.max(1, lines.size()));
                    for (int i = upfront; i < lines.size(); i++) {
                        producer.send(new ProducerRecord<>(input, "line-" + i, lines.get(i)));
                        if (i == lines.size() / 2) {
                            producer.flush();
                            while (got.isEmpty()) {
                                poll.accept(Duration.ofMillis(200));
                            }
                            System.out.println("HALFWAY");
                            System.out.flush();
                        }
                        Thread.sleep(pause);
                    }
                    producer.flush();
                    long deadline = System.nanoTime() + Duration.ofSeconds(240).toNanos();
                    while (!got.equals(expected)) {
                        if (System.nanoTime() > deadline) {
                            throw new AssertionError("counts " + got + ", expected " + expected
                                    + ", streams " + streams.state());
                        }
                        poll.accept(Duration.ofMillis(200));
                    }
                }
                producer.close();
                if (generated > 0 && guarantee.startsWith("exactly_once")) {
                    // Caching is off: each word's count went out once per occurrence.
                    for (Map.Entry<String, Long> e : expected.entrySet()) {
                        List<Long> seen = updates.get(e.getKey());
                        List<Long> want = java.util.stream.LongStream.rangeClosed(1, e.getValue())
                                .boxed().toList();
                        if (!want.equals(seen)) {
                            throw new AssertionError("updates of '" + e.getKey() + "': " + seen);
                        }
                    }
                    System.out.println("  every count update exactly once ("
                            + updates.values().stream().mapToInt(List::size).sum() + " updates)");
                }
                // Its internal topics: a repartition topic and a compacted changelog.
                Set<String> internal = admin.listTopics().names().get().stream()
                        .filter(t -> t.startsWith(id + "-") && !t.equals(input) && !t.equals(output))
                        .collect(Collectors.toSet());
                String changelog = internal.stream().filter(t -> t.endsWith("-changelog"))
                        .findFirst().orElseThrow(() -> new AssertionError("no changelog: " + internal));
                if (internal.stream().noneMatch(t -> t.endsWith("-repartition"))) {
                    throw new AssertionError("no repartition topic: " + internal);
                }
                ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, changelog);
                String policy = admin.describeConfigs(List.of(res)).all().get().get(res)
                        .get("cleanup.policy").value();
                if (!policy.equals("compact")) {
                    throw new AssertionError(changelog + " cleanup.policy=" + policy);
                }
                System.out.println("  internal topics " + internal.stream().sorted().toList()
                        + " (changelog compacted)");
            }
            System.out.println("  " + expected.values().stream().mapToLong(Long::longValue).sum()
                    + " words, " + expected.size() + " distinct, counted with " + guarantee);
        }
        System.out.println("PASS wordcount");
        System.exit(0);
    }

    /** Deterministic lines of eight words from a small vocabulary. */
    private static List<String> generate(int n) {
        String[] words = TEXT.split("\\W+");
        java.util.Random r = new java.util.Random(42);
        List<String> out = new java.util.ArrayList<>();
        for (int i = 0; i < n; i++) {
            StringBuilder line = new StringBuilder();
            for (int w = 0; w < 8; w++) {
                String word = words[r.nextInt(words.length)];
                if (!word.isEmpty()) {
                    line.append(word).append(' ');
                }
            }
            out.add(line.toString().trim());
        }
        return out;
    }
}
