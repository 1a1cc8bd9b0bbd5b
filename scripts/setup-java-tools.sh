#!/usr/bin/env bash
# Resolves Apache Kafka's command-line tools (pinned in tests/java/pom.xml) from Maven
# Central and writes their classpath to tests/java/target/classpath.txt. The jars stay
# in Maven's local repository, so a second run only checks the pom did not change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/java"

out=target/classpath.txt
stamp=target/pom.sha256
want="$(sha256sum pom.xml | cut -d' ' -f1)"
if [ -s "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup-java-tools: Kafka tools classpath already resolved"
    exit 0
fi
mkdir -p target
mvn -q -B -Dstyle.color=never dependency:build-classpath -Dmdep.outputFile="$out"
echo "$want" > "$stamp"
echo "setup-java-tools: Kafka tools $(grep -o '<kafka.version>[^<]*' pom.xml | cut -d'>' -f2)," \
    "$(tr ':' '\n' < "$out" | wc -l) jars"
