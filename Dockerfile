# syntax=docker/dockerfile:1
# cdcsync container image: `docker build -t cdcsync .`
# One image for every component: `cdcsync reader|applier|snapshot|reconcile|check --config FILE`.
# Checked offline by scripts/ops-test (stages, non-root user, entrypoint); not built by CI,
# which has no Docker engine.

# ---- build: the workspace's toolchain and the C dependencies of librdkafka (rdkafka-sys
# compiles it from source; the rust image already has gcc, make, pkg-config, libssl-dev, zlib).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cdcsync \
 && install -D -m 0755 target/release/cdcsync /out/cdcsync

# ---- runtime: glibc, OpenSSL and CA certificates, nothing else.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cdcsync \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cdcsync
COPY --from=build /out/cdcsync /usr/local/bin/cdcsync
# The same numeric user the Kubernetes manifests run as (runAsUser: 10001).
USER 10001:10001
# telemetry.bind: /metrics, /healthz, /readyz. Configs for containers bind 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/cdcsync"]
CMD ["--help"]
