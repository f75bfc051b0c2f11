package dev.cdcsync.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Times how fast a change-data-capture process fills a Kafka topic, and what it costs.
 *
 * <p>The probe watches the topic's end offsets (the sum over partitions is the number of
 * messages acknowledged by the broker) every {@code --poll-ms}, and samples the watched
 * process's CPU time and resident memory from {@code /proc/PID}. It never consumes the
 * messages, so it adds almost no load of its own to the two cores under test.
 *
 * <pre>
 *   Probe count --bootstrap B --topic T                      prints the topic's message count
 *   Probe watch --bootstrap B --topic T --target N --pid P   waits until the count reaches N
 *         [--launch-ms EPOCH_MS] [--timeout-s S] [--clk-tck 100] [--poll-ms 100]
 * </pre>
 *
 * <p>{@code watch} prints {@code key=value} lines: the time from launch to the first new
 * message and to the target, the streaming rate (messages between the first observation above
 * the starting count and the target, over that interval), the process's CPU seconds while
 * streaming and in total, and its peak RSS ({@code VmHWM}).
 */
public final class Probe {
    private Probe() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            usage();
        }
        Map<String, String> opts = new HashMap<>();
        for (int i = 1; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                usage();
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        String bootstrap = required(opts, "bootstrap");
        String topic = required(opts, "topic");
        switch (args[0]) {
            case "count" -> {
                try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap)) {
                    System.out.println(count(c, topic, false));
                }
            }
            case "watch" -> watch(opts, bootstrap, topic);
            default -> usage();
        }
    }

    private static void watch(Map<String, String> opts, String bootstrap, String topic) throws Exception {
        long target = Long.parseLong(required(opts, "target"));
        long pid = Long.parseLong(required(opts, "pid"));
        long launchMs = Long.parseLong(opts.getOrDefault("launch-ms", Long.toString(System.currentTimeMillis())));
        long timeoutMs = Long.parseLong(opts.getOrDefault("timeout-s", "1800")) * 1000L;
        long clkTck = Long.parseLong(opts.getOrDefault("clk-tck", "100"));
        long pollMs = Long.parseLong(opts.getOrDefault("poll-ms", "100"));

        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap)) {
            long start = -1;
            long firstMs = -1;
            long firstCount = -1;
            double firstCpu = 0;
            long last = -1;
            long maxRssKb = 0;
            while (true) {
                long now = System.currentTimeMillis();
                if (now - launchMs > timeoutMs) {
                    System.out.println("error=timeout after " + (now - launchMs) / 1000 + " s with " + last + " of " + target + " messages");
                    System.exit(2);
                }
                if (!Files.exists(Path.of("/proc/" + pid))) {
                    System.out.println("error=process " + pid + " exited with " + last + " of " + target + " messages");
                    System.exit(3);
                }
                long n = count(c, topic, true);
                maxRssKb = Math.max(maxRssKb, procStatusKb(pid, "VmRSS:"));
                if (start < 0 && n >= 0) {
                    start = n;
                }
                if (n > start && firstMs < 0) {
                    firstMs = now;
                    firstCount = n;
                    firstCpu = cpuSeconds(pid, clkTck);
                }
                if (n != last) {
                    last = n;
                    System.err.printf("probe %7.1fs  %d / %d messages%n", (now - launchMs) / 1000.0, n, target);
                }
                if (n >= target) {
                    double cpu = cpuSeconds(pid, clkTck);
                    long hwm = procStatusKb(pid, "VmHWM:");
                    double streamS = Math.max(1e-3, (now - firstMs) / 1000.0);
                    System.out.println("messages_at_start=" + start);
                    System.out.println("messages_at_first_observation=" + firstCount);
                    System.out.println("messages_at_end=" + n);
                    System.out.printf("first_new_message_after_launch_s=%.2f%n", (firstMs - launchMs) / 1000.0);
                    System.out.printf("all_in_kafka_after_launch_s=%.2f%n", (now - launchMs) / 1000.0);
                    System.out.printf("stream_s=%.2f%n", streamS);
                    System.out.printf("stream_rows_per_s=%.0f%n", (n - firstCount) / streamS);
                    System.out.printf("rows_per_s_from_launch=%.0f%n", (n - start) / ((now - launchMs) / 1000.0));
                    System.out.printf("cpu_s_while_streaming=%.2f%n", cpu - firstCpu);
                    System.out.printf("cpu_s_total=%.2f%n", cpu);
                    System.out.printf("peak_rss_mib=%.1f%n", Math.max(hwm, maxRssKb) / 1024.0);
                    return;
                }
                Thread.sleep(pollMs);
            }
        }
    }

    private static KafkaConsumer<byte[], byte[]> consumer(String bootstrap) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        return new KafkaConsumer<>(p);
    }

    /** The topic's message count (sum of end offsets), or -1 while it does not exist yet. */
    private static long count(KafkaConsumer<byte[], byte[]> c, String topic, boolean missingOk) {
        List<PartitionInfo> infos = c.listTopics(Duration.ofSeconds(10)).get(topic);
        if (infos == null || infos.isEmpty()) {
            if (missingOk) {
                return -1;
            }
            return 0;
        }
        List<TopicPartition> parts = new ArrayList<>();
        for (PartitionInfo i : infos) {
            parts.add(new TopicPartition(topic, i.partition()));
        }
        long sum = 0;
        for (Long end : c.endOffsets(parts, Duration.ofSeconds(10)).values()) {
            sum += end;
        }
        return sum;
    }

    /** utime + stime of the process, from /proc/PID/stat (fields 14 and 15). */
    private static double cpuSeconds(long pid, long clkTck) {
        try {
            String stat = Files.readString(Path.of("/proc/" + pid + "/stat"));
            String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            // After the command name, field 3 (state) is index 0, so utime (14) is index 11.
            return (Long.parseLong(f[11]) + Long.parseLong(f[12])) / (double) clkTck;
        } catch (Exception e) {
            return Double.NaN;
        }
    }

    private static long procStatusKb(long pid, String key) {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/" + pid + "/status"))) {
                if (line.startsWith(key)) {
                    return Long.parseLong(line.substring(key.length()).trim().split("\\s+")[0]);
                }
            }
        } catch (Exception e) {
            // The process has gone; the caller reports that.
        }
        return 0;
    }

    private static String required(Map<String, String> opts, String key) {
        String v = opts.get(key);
        if (v == null) {
            usage();
        }
        return v;
    }

    private static void usage() {
        System.err.println("usage: Probe count|watch --bootstrap B --topic T [--target N --pid P ...]");
        System.exit(64);
    }
}
