# syntax=docker/dockerfile:1.7
#
# Multi-stage build of the sidecar (and of the .NET emulator, for docker-compose.yml).
#
#   docker build -t sidecar:0.1.0 .                          # production image (last stage)
#   docker build --target emulator -t sidecar-emulator .     # the .NET emulator, dev only
#
# Targets:
#   builder        rust on Debian bookworm: cargo build --release --locked
#   emulator       dotnet-emulator on distroless cc (debug variant: busybox for healthchecks)
#   sidecar-debug  the sidecar on the same debug base, for docker-compose (its healthcheck
#                  needs busybox wget); never deploy it
#   sidecar        the production image: the release binary on
#                  gcr.io/distroless/cc-debian12:nonroot; no shell, no package manager,
#                  user 65532, nothing writable needed (k8s runs it read-only)
#
# Expected size of `sidecar`: about 45-55 MB uncompressed, 15-20 MB compressed in a registry.
# - base: distroless cc-debian12 is ~23 MB: glibc, libgcc_s, libssl, CA certificates, tzdata.
#   The binary links only libc, libm and libgcc_s dynamically (TLS is rustls, SQLite is
#   compiled in): the "cc" flavour has those ("static" has no glibc).
# - the binary: 19 MB unstripped (7 MB gzipped) measured on 2026-12-04 from a tree that did
#   not yet have the whole event path; expect 20-30 MB once NATS, Redis and the outbox are in.
#   Kept unstripped so that panic backtraces name their frames (stripping saves ~18 %).
# A debian:bookworm-slim base would add ~50 MB of shell, coreutils and apt the service never
# runs. The release profile (thin LTO, codegen-units 4) is Cargo.toml's.
#
# The builder's Debian release (bookworm) matches the runtime's (debian12), so the binary
# finds the same glibc it was linked against.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
# The whole workspace: every member must be present for `--locked` resolution.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY actors ./actors
COPY migrations ./migrations
COPY emulator ./emulator
COPY bench ./bench
COPY tests ./tests
# Cache mounts keep the registry and the target directory between builds (BuildKit); the
# binaries are copied out of the cached target/ since a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked -p sidecar -p emulator \
 && mkdir -p /out \
 && cp target/release/sidecar target/release/dotnet-emulator /out/

# --- the .NET emulator (docker-compose only) ------------------------------------------------
FROM gcr.io/distroless/cc-debian12:debug-nonroot AS emulator
COPY --from=builder /out/dotnet-emulator /usr/local/bin/dotnet-emulator
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/dotnet-emulator"]
CMD ["--bind", "0.0.0.0:5000"]

# --- the sidecar with busybox (docker-compose only) -----------------------------------------
FROM gcr.io/distroless/cc-debian12:debug-nonroot AS sidecar-debug
COPY --from=builder /out/sidecar /usr/local/bin/sidecar
WORKDIR /home/nonroot
USER 65532:65532
ENV APP_ENV=prod \
    SIDECAR_BIND=0.0.0.0:8001
EXPOSE 8001
ENTRYPOINT ["/usr/local/bin/sidecar"]

# --- the production image (default target) --------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS sidecar
COPY --from=builder /out/sidecar /usr/local/bin/sidecar
# The home of the nonroot user: where the default SQLite file (sidecar.db) and a .env would
# be, for a plain `docker run`. In Kubernetes the root filesystem is read-only and
# DATABASE_URL points at PostgreSQL.
WORKDIR /home/nonroot
USER 65532:65532
ENV APP_ENV=prod \
    SIDECAR_BIND=0.0.0.0:8001
EXPOSE 8001
# SIGTERM (docker stop, Kubernetes) drains in-flight requests and exits 0 within
# SHUTDOWN_GRACE_SECONDS; the binary is PID 1 and handles it itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sidecar"]
