# The agent image: `docker build -t ghcr.io/tollgate/tollgate:0.1.0 .`
# Built with the same toolchain as CI; the eBPF objects are compiled by
# egress-bpf's build script (clang) and embedded in the binary.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
# nft (TPROXY rules) and ip (policy routing) are run by the agent.
RUN apt-get update && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["agent", "--kubernetes"]
