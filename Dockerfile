# One image with the Riffle binaries. Base images are build arguments so the image can
# be built from a local mirror or an air-gapped base.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
# libclang for the RocksDB bindings; the version is whatever the base image's release ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin riffle --bin riffle-operator \
    && install -D --strip target/release/riffle /out/riffle \
    && install -D --strip target/release/riffle-operator /out/riffle-operator

FROM ${RUNTIME_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin riffle \
    && mkdir -p /var/lib/riffle \
    && chown 10001:10001 /var/lib/riffle
COPY --from=build /out/riffle /out/riffle-operator /usr/local/bin/
USER 10001
ENV RIFFLE_DATA_DIR=/var/lib/riffle
EXPOSE 9092 9644
ENTRYPOINT ["/usr/local/bin/riffle"]
