# syntax=docker/dockerfile:1
# linkcast: a release binary in a slim, non-root image.
#
#   docker build -t linkcast .
#   docker run --rm -p 7070:7070 -p 7080:7080 -p 7443:7443/udp -p 127.0.0.1:7090:7090 \
#     -e LINKCAST_JWT_SECRET=... -e LINKCAST_API_KEYS=... linkcast
#
# The default command is `serve` (a hub and a Link in one process) with deploy/docker/linkcast.toml;
# pass `hub ...` or `link ...` arguments for a cluster node (deploy/k8s/). docs/operations.md
# "Deploying" explains the choices.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit), so a source change does not
# refetch or rebuild the dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin linkcast \
    && install -m 0755 target/release/linkcast /usr/local/bin/linkcast

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 linkcast \
    && useradd --system --uid 10001 --gid linkcast --no-create-home --shell /usr/sbin/nologin linkcast
COPY --from=build /usr/local/bin/linkcast /usr/local/bin/linkcast
COPY deploy/docker/linkcast.toml /etc/linkcast/linkcast.toml
USER 10001:10001
# mimalloc then keeps transparent huge pages out from its own start, before linkcast's `main`
# does (≈ 4 MB less per process; docs/operations.md).
ENV MIMALLOC_ALLOW_THP=0
# HTTP API + demo page, client WebSocket, client QUIC, admin (/metrics, /healthz).
EXPOSE 7070/tcp 7080/tcp 7443/udp 7090/tcp
# No curl in a slim image: the binary probes itself (exit 0 iff /healthz answers 2xx).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/linkcast", "healthcheck", "http://127.0.0.1:7090/healthz"]
# SIGTERM (docker stop) closes clients with 1001; give it more than link.drain_secs:
#   docker stop --time 30
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/linkcast"]
CMD ["serve", "--config", "/etc/linkcast/linkcast.toml", "--http", "0.0.0.0:7070", "--ws", "0.0.0.0:7080", "--quic", "0.0.0.0:7443"]
