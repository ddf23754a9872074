# The example upstream (examples/echo_upstream.rs) on its own: it answers
# every request with a JSON description of what arrived. For trying the
# gateway out with docker/compose.yaml and for docker/test.sh; not for
# production. Build from the repository root, like docker/Dockerfile:
#
#   docker build -f docker/echo.Dockerfile -t tokengate-echo .
#   docker build -f docker/echo.Dockerfile --target runtime-prebuilt -t tokengate-echo .
#       the second after `RUSTFLAGS='-C target-feature=+crt-static' cargo build
#       --release --locked --target x86_64-unknown-linux-gnu --example echo_upstream`
#
# Stage order and names follow docker/Dockerfile (prebuilt before builder).

ARG RUST_VERSION=1.95

FROM scratch AS base
# Nothing to write and no secrets: any unprivileged uid will do.
USER 65532:65532
ENV LISTEN=0.0.0.0:8000
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/echo_upstream"]

FROM base AS runtime-prebuilt
COPY target/x86_64-unknown-linux-gnu/release/examples/echo_upstream /echo_upstream

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples/echo_upstream.rs ./examples/
RUN target="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS='-C target-feature=+crt-static' \
       cargo build --release --locked --target "$target" --example echo_upstream \
    && cp "target/$target/release/examples/echo_upstream" /echo_upstream

FROM base AS runtime
COPY --from=builder /echo_upstream /echo_upstream
