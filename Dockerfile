# The slidegate image: a release build, then only the binary, curl (for the
# health check) and the shipped config files on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY lua lua
# Cargo.toml names the benchmark target; the manifest does not load without it.
COPY benches benches
RUN cargo build --release --locked --bin slidegate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/slidegate /usr/local/bin/slidegate
COPY config /etc/slidegate
ENV SLIDEGATE__SERVER__BIND=0.0.0.0:8080 \
    SLIDEGATE__LOG__FORMAT=json
EXPOSE 8080
USER 65534:65534
ENTRYPOINT ["slidegate"]
