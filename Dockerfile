# rollcall: one self-contained binary in a slim image. Platforms check /readyz themselves,
# so the image has no HEALTHCHECK.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies in their own layer: a change under src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/rollcall --create-home rollcall
COPY --from=build /src/target/release/rollcall /usr/local/bin/rollcall
USER rollcall
# The default SQLite registry file lands here (writable by the rollcall user).
WORKDIR /var/lib/rollcall
EXPOSE 8080
CMD ["rollcall", "serve"]
