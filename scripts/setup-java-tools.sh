#!/usr/bin/env bash
# Resolves Apache Kafka's command-line tools, Java client and Kafka Streams (pinned in
# tests/java/pom.xml) from Maven Central, writes their classpath to
# tests/java/target/classpath.txt, and compiles the Java checks in tests/java/src into
# tests/java/target/classes. The jars stay in Maven's local repository; each step runs
# again only when its inputs changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/java"

out=target/classpath.txt
stamp=target/pom.sha256
want="$(sha256sum pom.xml | cut -d' ' -f1)"
mkdir -p target
if [ -s "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup-java-tools: Kafka classpath already resolved"
else
    mvn -q -B -Dstyle.color=never dependency:build-classpath -Dmdep.outputFile="$out"
    echo "$want" > "$stamp"
    rm -f target/classes.sha256
    echo "setup-java-tools: Kafka $(grep -o '<kafka.version>[^<]*' pom.xml | cut -d'>' -f2)," \
        "$(tr ':' '\n' < "$out" | wc -l) jars"
fi

sources=$(find src -name '*.java' | sort)
want="$(cat $sources | sha256sum | cut -d' ' -f1)"
if [ -f target/classes.sha256 ] && [ "$(cat target/classes.sha256)" = "$want" ]; then
    echo "setup-java-tools: Java checks already compiled"
else
    rm -rf target/classes
    # shellcheck disable=SC2086
    javac -Xlint:all,-try -Werror -d target/classes -cp "$(cat "$out")" $sources
    echo "$want" > target/classes.sha256
    echo "setup-java-tools: compiled $(echo "$sources" | wc -l) Java sources"
fi
