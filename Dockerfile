# sngan on the official PyTorch CUDA runtime image, which already holds torch and torchvision.
#
#   docker build -t sngan .
#   docker run --gpus all -v $PWD/runs:/workspace/runs sngan model=dcgan
#
# Volumes (mount the ones you want to keep; see the README's "Docker" section):
#   /workspace/data   CIFAR-10 (data.root=data): cifar-10-batches-py/ is downloaded here if missing
#   /workspace/runs   run directories: checkpoints, TensorBoard events, samples
#   /workspace/cache  TORCH_HOME: torch-fidelity's Inception weights (hub/checkpoints/) and
#                     reference statistics (fidelity_cache/), and torch.compile's caches
# Arguments after the image name are sngan-train overrides; --entrypoint sngan-eval (or
# sngan-sample, tensorboard) runs the other tools.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/workspace/cache/torch \
    TORCHINDUCTOR_CACHE_DIR=/workspace/cache/inductor \
    TRITON_CACHE_DIR=/workspace/cache/triton

# The configs are installed as the package sngan.configs, so sngan-train finds them in any
# working directory (the install is not editable: /opt/sngan is only the source it came from).
WORKDIR /opt/sngan
COPY pyproject.toml README.md ./
COPY sngan ./sngan
COPY configs ./configs
RUN pip install --no-cache-dir . && sngan --version

# Relative paths in the config (data.root=data, runs/...) resolve against /workspace.
WORKDIR /workspace
VOLUME ["/workspace/data", "/workspace/runs", "/workspace/cache"]
ENTRYPOINT ["sngan-train"]
