# The runtime image of Linux `python` and `process` pools: `cellbus serve` built with
# Python cells (cargo feature `python`, CPython embedded), with python3 for process cells
# (the runtime puts its own copy of the Python SDK, `cellbus_cell`, on their PYTHONPATH).
#
#   docker build -f images/runtime-python.Dockerfile -t cellbus-runtime-python:dev .
#
# Needs BuildKit for the cache mounts. Same pod settings as images/runtime.Dockerfile
# (uid 65532, read-only root filesystem, emptyDirs at /var/cache/cellbus and /tmp);
# Python writes no bytecode where it cannot.

FROM rust:1.95-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p cellbus-runtime --features python --bin cellbus \
    && install -D -m 0755 target/release/cellbus /out/cellbus \
    && mkdir -p /out/cache

# The builder's Debian release, so its glibc and its libpython3.11 are the ones linked.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpython3.11 python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/cellbus /usr/local/bin/cellbus
# Process cells run under users of their own: the runtime (uid 65532) holds CAP_SETUID
# and CAP_SETGID for that alone, permitted (not effective) by these file capabilities, as
# Kubernetes sets no ambient ones. The process pool's pod adds both capabilities and
# allows privilege escalation (which file capabilities need); a python pool's pod adds
# neither, drops ALL and sets no-new-privileges, so there the runtime gets none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_setuid,cap_setgid=p /usr/local/bin/cellbus \
    && apt-get purge -y libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder --chown=65532:65532 /out/cache /var/cache/cellbus
ENV CELLBUS_CACHE_DIR=/var/cache/cellbus
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cellbus"]
CMD ["serve"]
