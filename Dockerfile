# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY static ./static
RUN cargo build --release --locked && strip target/release/agent-api

# Runtime stage: a small Debian with CA certificates, running as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home agent
COPY --from=build /src/target/release/agent-api /usr/local/bin/agent-api
USER agent
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/agent-api"]
