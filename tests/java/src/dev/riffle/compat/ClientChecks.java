package dev.riffle.compat;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.NoOffsetForPartitionException;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.OffsetAndTimestamp;
import org.apache.kafka.clients.consumer.OffsetOutOfRangeException;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.InvalidReplicationFactorException;
import org.apache.kafka.common.errors.InvalidTopicException;
import org.apache.kafka.common.errors.NotEnoughReplicasException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.errors.RecordTooLargeException;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Apache Kafka's Java client against a Riffle broker or cluster, one named check per run:
 * {@code ClientChecks BOOTSTRAP REPLICATION_FACTOR CHECK}. A check prints what it saw and
 * exits 0, or fails with the exception (exit 1). Each check makes its own topics and groups.
 */
public final class ClientChecks {
    private final String bootstrap;
    private final short rf;
    private final Admin admin;

    private ClientChecks(String bootstrap, short rf) {
        this.bootstrap = bootstrap;
        this.rf = rf;
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        this.admin = Admin.create(p);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: ClientChecks BOOTSTRAP REPLICATION_FACTOR CHECK");
            System.exit(2);
        }
        ClientChecks c = new ClientChecks(args[0], Short.parseShort(args[1]));
        try {
            switch (args[2]) {
                case "compression-and-acks" -> c.compressionAndAcks();
                case "idempotent-producer" -> c.idempotentProducer();
                case "subscribe-range" -> c.subscribe("range");
                case "subscribe-cooperative-sticky" -> c.subscribe("cooperative-sticky");
                case "assign-seek-offsets-for-times" -> c.assignSeekOffsetsForTimes();
                case "commit-sync-and-async" -> c.commitSyncAndAsync();
                case "static-membership" -> c.staticMembership();
                case "admin" -> c.adminCalls();
                case "errors" -> c.errors();
                case "transactions" -> c.transactions();
                default -> throw new IllegalArgumentException("no check " + args[2]);
            }
        } finally {
            c.admin.close(Duration.ofSeconds(5));
        }
        System.out.println("PASS " + args[2]);
    }

    // ---- helpers ------------------------------------------------------------------------

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static void waitFor(BooleanSupplier cond, String what, Duration timeout)
            throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (!cond.getAsBoolean()) {
            check(System.nanoTime() < deadline, "timed out waiting for " + what);
            Thread.sleep(100);
        }
    }

    /** The cause of a failed future, which is what applications catch. */
    private static Throwable failure(Future<?> f) throws InterruptedException {
        try {
            f.get();
        } catch (ExecutionException e) {
            return e.getCause();
        }
        throw new AssertionError("expected a failure, got success");
    }

    private static void expect(Class<? extends Throwable> type, Throwable got) {
        check(type.isInstance(got), "expected " + type.getSimpleName() + ", got " + got);
        System.out.println("  " + type.getSimpleName() + ": " + got.getMessage());
    }

    private String newTopic(int partitions, Map<String, String> configs) throws Exception {
        String name = "java-" + UUID.randomUUID().toString().substring(0, 12);
        admin.createTopics(List.of(new NewTopic(name, partitions, rf).configs(configs)))
                .all().get();
        // Until every partition has a leader, a producer's first metadata may lack them.
        waitFor(() -> {
            try {
                TopicDescription d = admin.describeTopics(List.of(name)).allTopicNames().get()
                        .get(name);
                return d.partitions().size() == partitions
                        && d.partitions().stream().allMatch(p -> p.leader() != null);
            } catch (Exception e) {
                return false;
            }
        }, "leaders of " + name, Duration.ofSeconds(30));
        return name;
    }

    private Properties producerProps() {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        return p;
    }

    private Properties consumerProps(String group) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        if (group != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        }
        return p;
    }

    /** Produces {@code n} keyed records round-robin over the partitions; returns them by value. */
    private List<RecordMetadata> produce(String topic, int n, String prefix) throws Exception {
        try (KafkaProducer<String, String> p = new KafkaProducer<>(producerProps())) {
            List<Future<RecordMetadata>> fs = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                fs.add(p.send(new ProducerRecord<>(topic, "k" + i, prefix + i)));
            }
            List<RecordMetadata> out = new ArrayList<>();
            for (Future<RecordMetadata> f : fs) {
                out.add(f.get());
            }
            return out;
        }
    }

    /** Every record of the partitions, read with assign() from the start. */
    private List<ConsumerRecord<String, String>> readAll(String topic, int partitions, int expect)
            throws InterruptedException {
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(consumerProps(null))) {
            List<TopicPartition> tps = new ArrayList<>();
            for (int i = 0; i < partitions; i++) {
                tps.add(new TopicPartition(topic, i));
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            List<ConsumerRecord<String, String>> got = new ArrayList<>();
            long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
            while (got.size() < expect && System.nanoTime() < deadline) {
                c.poll(Duration.ofMillis(200)).forEach(got::add);
            }
            return got;
        }
    }

    // ---- checks -------------------------------------------------------------------------

    /**
     * Consume-transform-produce with sendOffsetsToTransaction, commits and aborts mixed: a
     * read_committed consumer sees every input exactly once in the output, the group's
     * offsets follow the committed transactions, and a second producer with the same
     * transactional id fences the first.
     */
    private void transactions() throws Exception {
        String in = newTopic(2, Map.of());
        String out = newTopic(2, Map.of());
        produce(in, 200, "in-");
        String group = "java-eos-" + UUID.randomUUID().toString().substring(0, 8);
        String txnId = "java-txn-" + UUID.randomUUID().toString().substring(0, 8);
        Properties pp = producerProps();
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        Properties cp = consumerProps(group);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "20");
        int aborted = 0;
        Set<String> done = new HashSet<>();
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp);
                KafkaConsumer<String, String> c = new KafkaConsumer<>(cp)) {
            p.initTransactions();
            c.subscribe(List.of(in));
            long deadline = System.nanoTime() + Duration.ofSeconds(90).toNanos();
            int round = 0;
            while (done.size() < 200) {
                check(System.nanoTime() < deadline, "processed only " + done.size());
                var records = c.poll(Duration.ofMillis(500));
                if (records.isEmpty()) {
                    continue;
                }
                round++;
                p.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> next = new java.util.HashMap<>();
                for (ConsumerRecord<String, String> r : records) {
                    p.send(new ProducerRecord<>(out, r.partition(), r.key(), r.value().toUpperCase()));
                    next.put(new TopicPartition(r.topic(), r.partition()),
                            new OffsetAndMetadata(r.offset() + 1));
                }
                p.sendOffsetsToTransaction(next, c.groupMetadata());
                if (round % 3 == 0) {
                    p.flush();
                    p.abortTransaction();
                    aborted++;
                    // Rewind to what the group committed.
                    Map<TopicPartition, OffsetAndMetadata> committed = c.committed(c.assignment());
                    for (TopicPartition tp : c.assignment()) {
                        OffsetAndMetadata o = committed.get(tp);
                        c.seek(tp, o == null ? 0 : o.offset());
                    }
                } else {
                    p.commitTransaction();
                    records.forEach(r -> done.add(r.value()));
                }
            }
            Map<TopicPartition, OffsetAndMetadata> committed = c.committed(c.assignment());
            long sum = committed.values().stream().mapToLong(OffsetAndMetadata::offset).sum();
            check(sum == 200, "group offsets " + committed);
        }
        check(aborted > 0, "no transaction aborted");
        Properties rp = consumerProps(null);
        rp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        List<String> values = new ArrayList<>();
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(rp)) {
            List<TopicPartition> tps = List.of(new TopicPartition(out, 0), new TopicPartition(out, 1));
            c.assign(tps);
            c.seekToBeginning(tps);
            long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
            while (values.size() < 200 && System.nanoTime() < deadline) {
                c.poll(Duration.ofMillis(200)).forEach(r -> values.add(r.value()));
            }
            // Nothing more arrives: aborted records stay hidden.
            c.poll(Duration.ofSeconds(1)).forEach(r -> values.add(r.value()));
        }
        Set<String> expected = new HashSet<>();
        for (int i = 0; i < 200; i++) {
            expected.add(("in-" + i).toUpperCase());
        }
        check(values.size() == 200 && new HashSet<>(values).equals(expected),
                "read_committed output: " + values.size() + " records");
        System.out.println("  200 inputs, " + aborted + " transactions aborted, output exactly once");

        // Zombie fencing: the newer producer wins.
        try (KafkaProducer<String, String> old = new KafkaProducer<>(pp)) {
            old.initTransactions();
            old.beginTransaction();
            old.send(new ProducerRecord<>(out, 0, "z", "zombie")).get();
            try (KafkaProducer<String, String> fresh = new KafkaProducer<>(pp)) {
                fresh.initTransactions();
                // Its write is refused (an old epoch, abortable as with Kafka), and ending
                // its transaction reveals it was fenced.
                expect(org.apache.kafka.common.errors.InvalidProducerEpochException.class,
                        failure(old.send(new ProducerRecord<>(out, 0, "z", "zombie-2"))));
                Throwable got = null;
                try {
                    old.abortTransaction();
                } catch (ProducerFencedException e) {
                    got = e;
                }
                expect(ProducerFencedException.class, got);
            }
        }
    }

    /** Every compression codec with every acks setting; keys, values and headers read back. */
    private void compressionAndAcks() throws Exception {
        String topic = newTopic(1, Map.of());
        Set<String> sent = new HashSet<>();
        for (String codec : List.of("none", "gzip", "snappy", "lz4", "zstd")) {
            for (String acks : List.of("0", "1", "all")) {
                Properties props = producerProps();
                props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
                props.put(ProducerConfig.ACKS_CONFIG, acks);
                // Idempotence needs acks=all.
                props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, acks.equals("all"));
                try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
                    for (int i = 0; i < 40; i++) {
                        String v = codec + "/" + acks + "/" + i + "/" + "x".repeat(200);
                        ProducerRecord<String, String> r = new ProducerRecord<>(topic, "key" + i, v);
                        r.headers().add("codec", codec.getBytes(StandardCharsets.UTF_8));
                        RecordMetadata md = p.send(r).get();
                        // acks=0 gets no offset back.
                        check(acks.equals("0") ? md.offset() == -1 : md.offset() >= 0,
                                "offset " + md.offset() + " for acks=" + acks);
                        sent.add(v);
                    }
                }
            }
        }
        List<ConsumerRecord<String, String>> got = readAll(topic, 1, sent.size());
        Set<String> values = new HashSet<>();
        for (ConsumerRecord<String, String> r : got) {
            values.add(r.value());
            String codec = r.value().split("/")[0];
            Header h = r.headers().lastHeader("codec");
            check(h != null && new String(h.value(), StandardCharsets.UTF_8).equals(codec),
                    "header of " + r.value());
            check(r.key().equals("key" + r.value().split("/")[2]), "key of " + r.value());
        }
        check(values.equals(sent), "read back " + values.size() + " of " + sent.size());
        System.out.println("  " + sent.size() + " records, 5 codecs x 3 acks settings, read back");
    }

    /** The idempotent producer: contiguous offsets, no duplicates, one producer id. */
    private void idempotentProducer() throws Exception {
        String topic = newTopic(1, Map.of("min.insync.replicas", String.valueOf(Math.min(rf, 2))));
        Properties props = producerProps();
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "5");
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, "2048");
        int n = 5000;
        try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
            List<Future<RecordMetadata>> fs = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                fs.add(p.send(new ProducerRecord<>(topic, null, "idem-" + i)));
            }
            for (int i = 0; i < n; i++) {
                check(fs.get(i).get().offset() == i, "offset of record " + i);
            }
        }
        List<ConsumerRecord<String, String>> got = readAll(topic, 1, n);
        check(got.size() == n, "read " + got.size() + " of " + n);
        for (int i = 0; i < n; i++) {
            check(got.get(i).value().equals("idem-" + i) && got.get(i).offset() == i,
                    "record " + i + ": " + got.get(i));
        }
        System.out.println("  " + n + " records at offsets 0.." + (n - 1) + " in order, once each");
    }

    /** Two members share a topic's partitions with the given assignor; one leaves, the other
     * takes everything; every record is consumed. */
    private void subscribe(String assignor) throws Exception {
        int parts = 4;
        String topic = newTopic(parts, Map.of());
        String group = "java-" + assignor + "-" + UUID.randomUUID().toString().substring(0, 8);
        produce(topic, 200, "s");
        Properties props = consumerProps(group);
        props.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                assignor.equals("range")
                        ? "org.apache.kafka.clients.consumer.RangeAssignor"
                        : "org.apache.kafka.clients.consumer.CooperativeStickyAssignor");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "true");
        props.put(ConsumerConfig.AUTO_COMMIT_INTERVAL_MS_CONFIG, "200");
        props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "10");
        Set<String> seen = new HashSet<>();
        try (KafkaConsumer<String, String> a = new KafkaConsumer<>(props);
             KafkaConsumer<String, String> b = new KafkaConsumer<>(props)) {
            a.subscribe(List.of(topic));
            b.subscribe(List.of(topic));
            long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            while (!(a.assignment().size() + b.assignment().size() == parts
                    && !a.assignment().isEmpty() && !b.assignment().isEmpty())) {
                check(System.nanoTime() < deadline, "both members assigned: " + a.assignment()
                        + " / " + b.assignment());
                a.poll(Duration.ofMillis(100)).forEach(r -> seen.add(r.value()));
                b.poll(Duration.ofMillis(100)).forEach(r -> seen.add(r.value()));
            }
            Set<TopicPartition> both = new HashSet<>(a.assignment());
            check(both.stream().noneMatch(b.assignment()::contains), "overlapping assignments");
            System.out.println("  " + assignor + ": " + a.assignment().size() + " + "
                    + b.assignment().size() + " partitions");
            b.close();
            deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            while (a.assignment().size() != parts || seen.size() < 200) {
                check(System.nanoTime() < deadline,
                        "survivor takes every partition: " + a.assignment() + ", seen " + seen.size());
                a.poll(Duration.ofMillis(100)).forEach(r -> seen.add(r.value()));
            }
            a.commitSync();
            String protocol = admin.describeConsumerGroups(List.of(group)).all().get().get(group)
                    .partitionAssignor();
            check(protocol.equals(assignor), "group protocol " + protocol);
        }
        check(seen.size() == 200, "consumed " + seen.size());
        System.out.println("  all 200 records consumed; the survivor holds all " + parts);
    }

    /** assign/seek/position, beginning and end offsets, offsetsForTimes. */
    private void assignSeekOffsetsForTimes() throws Exception {
        String topic = newTopic(1, Map.of());
        TopicPartition tp = new TopicPartition(topic, 0);
        List<RecordMetadata> first = produce(topic, 20, "early-");
        Thread.sleep(50);
        long middle = System.currentTimeMillis();
        Thread.sleep(50);
        List<RecordMetadata> second = produce(topic, 20, "late-");
        check(second.get(0).timestamp() >= middle, "timestamps after the middle");
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(consumerProps(null))) {
            c.assign(List.of(tp));
            check(c.beginningOffsets(List.of(tp)).get(tp) == 0, "beginning offset");
            check(c.endOffsets(List.of(tp)).get(tp) == 40, "end offset");
            Map<TopicPartition, OffsetAndTimestamp> byTime =
                    c.offsetsForTimes(Map.of(tp, middle));
            check(byTime.get(tp).offset() == 20, "offsetsForTimes: " + byTime);
            check(c.offsetsForTimes(Map.of(tp, System.currentTimeMillis() + 60_000)).get(tp) == null,
                    "no offset after the last timestamp");
            c.seek(tp, 33);
            check(c.position(tp) == 33, "position after seek");
            List<ConsumerRecord<String, String>> got = new ArrayList<>();
            long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
            while (got.size() < 7 && System.nanoTime() < deadline) {
                c.poll(Duration.ofMillis(200)).forEach(got::add);
            }
            check(got.size() == 7 && got.get(0).offset() == 33 && got.get(0).value().equals("late-13"),
                    "records from 33: " + got);
            c.seekToBeginning(List.of(tp));
            check(c.position(tp) == 0, "position after seekToBeginning");
            c.seekToEnd(List.of(tp));
            check(c.position(tp) == 40, "position after seekToEnd");
        }
        System.out.println("  offsetsForTimes(middle) = 20; seek(33) reads 33..39");
        check(first.size() == 20, "first half");
    }

    /** commitSync with explicit offsets and metadata, commitAsync with a callback, and a new
     * member resuming from the committed offsets. */
    private void commitSyncAndAsync() throws Exception {
        String topic = newTopic(2, Map.of());
        String group = "java-commit-" + UUID.randomUUID().toString().substring(0, 8);
        produce(topic, 100, "c");
        TopicPartition p0 = new TopicPartition(topic, 0);
        TopicPartition p1 = new TopicPartition(topic, 1);
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(consumerProps(group))) {
            c.assign(List.of(p0, p1));
            c.commitSync(Map.of(p0, new OffsetAndMetadata(7, "seven"), p1, new OffsetAndMetadata(3)));
            Map<TopicPartition, OffsetAndMetadata> committed = c.committed(Set.of(p0, p1));
            check(committed.get(p0).offset() == 7 && committed.get(p0).metadata().equals("seven")
                    && committed.get(p1).offset() == 3, "committed " + committed);
            AtomicReference<Exception> result = new AtomicReference<>();
            AtomicReference<Boolean> done = new AtomicReference<>(false);
            c.commitAsync(Map.of(p0, new OffsetAndMetadata(11)), (offsets, e) -> {
                result.set(e);
                done.set(true);
            });
            long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
            while (!done.get()) {
                check(System.nanoTime() < deadline, "the async commit's callback");
                c.poll(Duration.ofMillis(50));
            }
            check(result.get() == null, "async commit failed: " + result.get());
        }
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(consumerProps(group))) {
            c.assign(List.of(p0, p1));
            check(c.position(p0) == 11 && c.position(p1) == 3,
                    "resumed at " + c.position(p0) + "/" + c.position(p1));
        }
        System.out.println("  committed 7 (with metadata) and 3, then 11 asynchronously; resumed there");
    }

    /** A static member that restarts within its session timeout gets its partitions back
     * without a rebalance (same generation). */
    private void staticMembership() throws Exception {
        String topic = newTopic(2, Map.of());
        String group = "java-static-" + UUID.randomUUID().toString().substring(0, 8);
        produce(topic, 20, "m");
        Properties props = consumerProps(group);
        props.put(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG, "member-a");
        props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "30000");
        int generation;
        Set<TopicPartition> assigned;
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(props)) {
            c.subscribe(List.of(topic));
            long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            while (c.assignment().size() != 2) {
                check(System.nanoTime() < deadline, "assignment");
                c.poll(Duration.ofMillis(100));
            }
            generation = c.groupMetadata().generationId();
            assigned = new HashSet<>(c.assignment());
            // A static member's close() does not leave the group.
        }
        ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(group)).all().get()
                .get(group);
        check(d.members().size() == 1
                && "member-a".equals(d.members().iterator().next().groupInstanceId().orElse(null)),
                "the static member stays in the group: " + d);
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(props)) {
            c.subscribe(List.of(topic));
            long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
            while (c.assignment().isEmpty()) {
                check(System.nanoTime() < deadline, "assignment after the restart");
                c.poll(Duration.ofMillis(100));
            }
            check(c.assignment().equals(assigned), "same partitions: " + c.assignment());
            check(c.groupMetadata().generationId() == generation,
                    "no rebalance: generation " + c.groupMetadata().generationId() + " was " + generation);
        }
        System.out.println("  rejoined as member-a in generation " + generation + ", no rebalance");
    }

    /** The Admin client's topic, config, partition, group, offset, record and cluster calls. */
    private void adminCalls() throws Exception {
        DescribeClusterResult cluster = admin.describeCluster();
        int brokers = cluster.nodes().get().size();
        check(brokers >= rf && cluster.clusterId().get() != null && cluster.controller().get() != null,
                "describeCluster");
        String topic = newTopic(2, Map.of("retention.ms", "3600000"));
        check(admin.listTopics().names().get().contains(topic), "listTopics");
        TopicDescription td = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
        check(td.partitions().size() == 2 && td.partitions().get(0).replicas().size() == rf
                && td.topicId() != null, "describeTopics " + td);
        ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        admin.incrementalAlterConfigs(Map.of(res, List.of(
                new AlterConfigOp(new ConfigEntry("retention.ms", "7200000"), AlterConfigOp.OpType.SET),
                new AlterConfigOp(new ConfigEntry("cleanup.policy", "compact"),
                        AlterConfigOp.OpType.APPEND)))).all().get();
        Map<String, ConfigEntry> cfg = admin.describeConfigs(List.of(res)).all().get().get(res)
                .entries().stream().collect(Collectors.toMap(ConfigEntry::name, e -> e));
        check(cfg.get("retention.ms").value().equals("7200000")
                && cfg.get("retention.ms").source() == ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG,
                "retention.ms " + cfg.get("retention.ms"));
        check(cfg.get("cleanup.policy").value().equals("delete,compact"),
                "cleanup.policy " + cfg.get("cleanup.policy"));
        ConfigResource broker = new ConfigResource(ConfigResource.Type.BROKER,
                String.valueOf(cluster.controller().get().id()));
        check(admin.describeConfigs(List.of(broker)).all().get().get(broker).get("log.retention.ms")
                != null, "broker configs");
        admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(3))).all().get();
        waitFor(() -> {
            try {
                return admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic)
                        .partitions().size() == 3;
            } catch (Exception e) {
                return false;
            }
        }, "3 partitions", Duration.ofSeconds(20));
        List<RecordMetadata> sent = produce(topic, 30, "a");
        TopicPartition tp = new TopicPartition(topic, sent.get(0).partition());
        long end = sent.stream().filter(m -> m.partition() == tp.partition()).count();
        ListOffsetsResult latest = admin.listOffsets(Map.of(tp, OffsetSpec.latest()));
        check(latest.partitionResult(tp).get().offset() == end, "listOffsets latest");
        check(admin.listOffsets(Map.of(tp, OffsetSpec.earliest())).partitionResult(tp).get().offset() == 0,
                "listOffsets earliest");
        check(admin.listOffsets(Map.of(tp, OffsetSpec.maxTimestamp())).partitionResult(tp).get()
                .offset() >= 0, "listOffsets maxTimestamp");
        admin.deleteRecords(Map.of(tp, RecordsToDelete.beforeOffset(2))).all().get();
        check(admin.listOffsets(Map.of(tp, OffsetSpec.earliest())).partitionResult(tp).get().offset() == 2,
                "deleteRecords moved the start");
        String group = "java-admin-" + UUID.randomUUID().toString().substring(0, 8);
        TopicPartition other = new TopicPartition(topic, (tp.partition() + 1) % 3);
        admin.alterConsumerGroupOffsets(group, Map.of(tp, new OffsetAndMetadata(5),
                other, new OffsetAndMetadata(0))).all().get();
        check(admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get().get(tp)
                .offset() == 5, "listConsumerGroupOffsets");
        check(admin.listGroups().all().get().stream().anyMatch(g -> g.groupId().equals(group)),
                "listGroups");
        check(admin.describeConsumerGroups(List.of(group)).all().get().get(group).members().isEmpty(),
                "describeConsumerGroups");
        admin.deleteConsumerGroupOffsets(group, Set.of(tp)).all().get();
        Map<TopicPartition, OffsetAndMetadata> left =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        check(!left.containsKey(tp) && left.containsKey(other), "deleteConsumerGroupOffsets " + left);
        admin.deleteConsumerGroups(List.of(group)).all().get();
        check(admin.listGroups().all().get().stream().noneMatch(g -> g.groupId().equals(group)),
                "deleteConsumerGroups");
        check(admin.describeLogDirs(List.of(cluster.controller().get().id())).allDescriptions().get()
                .values().stream().flatMap(m -> m.values().stream())
                .anyMatch(d -> d.replicaInfos().keySet().stream().anyMatch(t -> t.topic().equals(topic)))
                || rf < brokers, "describeLogDirs lists the topic");
        admin.deleteTopics(List.of(topic)).all().get();
        waitFor(() -> {
            try {
                return !admin.listTopics().names().get().contains(topic);
            } catch (Exception e) {
                return false;
            }
        }, "the topic deleted", Duration.ofSeconds(20));
        System.out.println("  " + brokers + " brokers; topic, config, partition, offset, record,"
                + " group and log-dir calls");
    }

    /** The exceptions a user meets, of the types Kafka gives. */
    private void errors() throws Exception {
        expect(UnknownTopicOrPartitionException.class,
                failure(admin.describeTopics(List.of("no-such-topic-" + UUID.randomUUID()))
                        .allTopicNames()));
        String topic = newTopic(1, Map.of());
        expect(TopicExistsException.class,
                failure(admin.createTopics(List.of(new NewTopic(topic, 1, rf))).all()));
        expect(InvalidReplicationFactorException.class,
                failure(admin.createTopics(List.of(new NewTopic(topic + "-rf", 1, (short) 9))).all()));
        expect(InvalidTopicException.class,
                failure(admin.createTopics(List.of(new NewTopic("bad topic!", 1, rf))).all()));
        Properties props = producerProps();
        props.put(ProducerConfig.MAX_REQUEST_SIZE_CONFIG, String.valueOf(8 << 20));
        props.put(ProducerConfig.RETRIES_CONFIG, "0");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "false");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
            expect(RecordTooLargeException.class,
                    failure(p.send(new ProducerRecord<>(topic, "x".repeat(2 << 20)))));
            // More in-sync replicas required than the partition has.
            String strict = newTopic(1, Map.of("min.insync.replicas", String.valueOf(rf + 1)));
            expect(NotEnoughReplicasException.class,
                    failure(p.send(new ProducerRecord<>(strict, "v"))));
        }
        produce(topic, 3, "e");
        Properties cp = consumerProps(null);
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "none");
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(cp)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            c.assign(List.of(tp));
            c.seek(tp, 50);
            Throwable got = null;
            try {
                long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
                while (System.nanoTime() < deadline) {
                    c.poll(Duration.ofMillis(200));
                }
            } catch (OffsetOutOfRangeException e) {
                got = e;
            }
            expect(OffsetOutOfRangeException.class, got);
        }
        Properties gp = consumerProps("java-none-" + UUID.randomUUID());
        gp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "none");
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(gp)) {
            c.assign(List.of(new TopicPartition(topic, 0)));
            Throwable got = null;
            try {
                c.poll(Duration.ofSeconds(10));
            } catch (NoOffsetForPartitionException e) {
                got = e;
            }
            expect(NoOffsetForPartitionException.class, got);
        }
    }
}
