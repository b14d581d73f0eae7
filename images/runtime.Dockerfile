# The runtime image: `cellbus serve`, what every CellPool's pods run.
#
#   docker build -f images/runtime.Dockerfile -t cellbus-runtime:dev .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. The operator
# runs the pods as uid 65532 with runAsNonRoot and a read-only root filesystem, with
# emptyDirs at /var/cache/cellbus (compiled code) and /tmp.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The target directory lives in a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p cellbus-runtime --bin cellbus \
    && install -D -m 0755 target/release/cellbus /out/cellbus \
    && mkdir -p /out/cache

# Same Debian release as the builder, so the glibc the binary links against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/cellbus /usr/local/bin/cellbus
# Writable by the runtime user also when no volume is mounted there (docker run).
COPY --from=builder --chown=65532:65532 /out/cache /var/cache/cellbus
ENV CELLBUS_CACHE_DIR=/var/cache/cellbus
# Numeric, so the kubelet can check runAsNonRoot even without runAsUser in the pod spec.
USER 65532:65532
# /healthz, /readyz and /metrics (CELLBUS_HTTP_ADDR).
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cellbus"]
CMD ["serve"]
