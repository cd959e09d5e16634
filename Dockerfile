# rollcall: one self-contained binary in a slim image. Platforms check /readyz themselves,
# so the image has no HEALTHCHECK.
#
# The binary lives at /app/target/release/rollcall and the image works in /app: that is
# where the Rust buildpack leaves it on Heroku, so the one Procfile line
# (`./target/release/rollcall serve`) finds it both there and under Dokku, which runs the
# Procfile's command in place of CMD for Dockerfile builds.

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
# /app is the user's home and writable: the default SQLite registry file lands there.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rollcall \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home rollcall
COPY --from=build /src/target/release/rollcall /app/target/release/rollcall
# Numeric, so Kubernetes can check runAsNonRoot without resolving a name.
USER 10001:10001
WORKDIR /app
EXPOSE 8080
CMD ["/app/target/release/rollcall", "serve"]
