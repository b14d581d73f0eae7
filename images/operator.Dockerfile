# The operator image: `cellbus-operator run`.
#
#   docker build -f images/operator.Dockerfile -t cellbus-operator:dev .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. Runs as uid
# 65532 and needs nothing writable.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The target directory lives in a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p cellbus-operator --bin cellbus-operator \
    && install -D -m 0755 target/release/cellbus-operator /out/cellbus-operator

# Same Debian release as the builder, so the glibc the binary links against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/cellbus-operator /usr/local/bin/cellbus-operator
# Numeric, so the kubelet can check runAsNonRoot even without runAsUser in the pod spec.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cellbus-operator"]
CMD ["run"]
