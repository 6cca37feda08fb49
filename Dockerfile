# The Leaky Tokens host: the `leaky` binary and the built policy components.
# docker build -t leaky-tokens .   (or `docker compose up`, see docker-compose.yml)

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo xtask guests && cargo build --release --locked --package leaky-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/leaky --create-home leaky
COPY --from=build /src/target/release/leaky /usr/local/bin/leaky
COPY --from=build /src/policies/*.wasm /src/policies/*.toml /etc/leaky/policies/
USER leaky
WORKDIR /var/lib/leaky
ENV LEAKY_SERVER__ADDR=0.0.0.0:8080 \
    LEAKY_DATA_DIR=/var/lib/leaky/data \
    LEAKY_POLICIES__DIR=/etc/leaky/policies \
    LEAKY_TELEMETRY__LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
ENTRYPOINT ["leaky"]
CMD ["serve"]
