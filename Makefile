# sfpp developer tasks. `make` (or `make help`) lists them.
#
# The install step puts torch in first: a bare `torch` requirement resolved by pip on a machine
# without torch pulls the multi-GB CUDA build. On a CPU-only machine we pin the CPU wheel; on a
# machine with a working `nvidia-smi` pip's default (CUDA) build is what we want; a torch that is
# already importable in the venv is always kept.

PY ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PIP_FLAGS ?= -q
# pip warns once per package about index locations of this machine's pip config that do not
# exist; drop those lines and keep every other message (errors included) on stderr.
PIP_NOISE := 2> >(grep -v -E "^WARNING: Location '[^']*' is ignored" >&2)

BIN := $(VENV)/bin
PYTHON := $(BIN)/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.installed
SRC_DIRS := src tests

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

.PHONY: help install test test-full browser slurm slurm-stop bench bench-publish demo demo-full study continuation study-ablations study-ablation-init serve docs gpu-wheels gpu-check gpu-check-cpu gpu-rehearsal lint format clean distclean

help: ## Show this list of targets
	@echo "Usage: make <target> [PY=python3]"
	@echo
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^#]*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PYTHON):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "keeping the installed torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA machine: torch comes from pip's default resolution"; \
	else \
		echo "no GPU: installing the CPU build torch==$(TORCH_VERSION)"; \
		$(PIP) install $(PIP_FLAGS) "torch==$(TORCH_VERSION)" $(PIP_NOISE); \
	fi
	@echo "installing sfpp editable with the dev and apps extras"
	@$(PIP) install $(PIP_FLAGS) -e '.[dev,apps]' $(PIP_NOISE)
	@touch $@

install: $(STAMP) ## Create .venv (if missing) and install sfpp editable with the dev and apps extras

test: install ## Run the fast test suite (no slow, no gpu, no benchmarks)
	$(BIN)/pytest -q --durations=25

browser: ## Install Debian's chromium and chromium-driver for the streaming page's browser test (apt)
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver are installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "no apt-get: install chromium and chromedriver yourself; the browser test skips without them"; \
	fi

test-full: install browser ## Run every test that needs no GPU, slow ones included (installs the browser, starts a one-node SLURM)
	-@$(MAKE) --no-print-directory slurm || echo "no local SLURM: the cluster tests will skip"
	SLURM_CONF=$(CURDIR)/.slurm/slurm.conf $(BIN)/pytest -q -o addopts='' -ra --strict-markers -m 'not gpu' --ignore=tests/benchmarks

slurm: ## Install (apt) and start a one-node SLURM for the cluster tests: export SLURM_CONF=.slurm/slurm.conf to use it
	tests/slurm/local_slurm.sh start

slurm-stop: ## Stop the daemons make slurm started (by PID)
	tests/slurm/local_slurm.sh stop

bench: install ## Run every tests/benchmarks/bench_*.py, print its table and write artifacts/bench/<script>.json
	@shopt -s nullglob; scripts=(tests/benchmarks/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmark scripts in tests/benchmarks/"; exit 0; fi; \
	mkdir -p artifacts/bench; failed=(); \
	for script in "$${scripts[@]}"; do \
		name=$$(basename "$$script" .py); \
		echo "== $$script"; \
		$(PYTHON) "$$script" --json "artifacts/bench/$$name.json" || failed+=("$$name"); \
	done; \
	if [ $${#failed[@]} -gt 0 ]; then echo "targets not met (or a check failed): $${failed[*]}"; exit 1; fi

bench-publish: ## Merge artifacts/bench/*.json (from make bench) into docs/results/benchmarks.json and regenerate the page
	$(PYTHON) -m sfpp.apps.results_pages --benchmarks artifacts/bench

demo: install ## The shipped teacher, then ODE init and Self-Forcing++ on the built-in world, a 20-horizon video, curves and summary in artifacts/demo
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.demo

demo-full: install ## make demo with the teacher trained here too (measured: 22 min on a 2-core CPU with native bf16, 45 without)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.demo --train-teacher

serve: install ## Stream the demo's student live on a local page (trains the demo's stages first if missing); prints the URL
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.demo --train-only
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.serve $(SERVE_ARGS)

study: install ## Self-Forcing vs Self-Forcing++ (+ GRPO) from one baseline, 1-50 horizons, seeds, and the compute-scaling curve (~2.5 h): artifacts/study
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.study --extra-steps 500 --grpo-steps 30 --scaling-budgets 250 500 750

continuation: install ## Continue real clips (1 and 8 frames given): students trained with and without prefixes, 20 horizons (~1 h with the study's baseline): artifacts/continuation
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.continuation

study-ablations: install ## Budget, rollout-length and window-sampling ablations beside the seed-1 continuations (~2 h): artifacts/study_ablations
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.study --train-seeds 1 --grpo-steps 0 \
		--ablations budget rollout_length window_sampling --out artifacts/study_ablations

study-ablation-init: install ## Self-Forcing++ from the ODE init beside the seed-1 continuations (~2 h; reuses study-ablations' stages): artifacts/study_ablation_init
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m sfpp.apps.study --train-seeds 1 --grpo-steps 0 \
		--ablations init --out artifacts/study_ablation_init

docs: install ## Build the documentation site into site/ (mkdocs build --strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The GPU machine's image has torch, lightning, transformers, einops and torchmetrics but no network:
# the packages it lacks travel as wheels downloaded here for its Python (3.12, manylinux x86_64) and
# are unpacked there into GPU_SITE with Python's zipfile (no pip needed on the image).
GPU_PY ?= python3
GPU_WHEELS := .gpu-wheels
GPU_SITE ?= /tmp/sfpp-gpu-site
GPU_CHECK_OUT ?= artifacts/gpu_check.json
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORM ?= manylinux_2_28_x86_64
# Pure-Python packages (built into py3-none-any wheels here; antlr4 4.9.3 has no wheel on PyPI) and
# compiled ones (downloaded for the image's Python and platform).
GPU_PURE_PACKAGES := diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
	importlib_metadata==10.2.0 zipp requests urllib3 idna certifi pytest pluggy iniconfig packaging
GPU_BINARY_PACKAGES := pillow charset-normalizer

gpu-wheels: install ## Download here the wheels the GPU check needs beyond the GPU image (into .gpu-wheels/)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PIP) wheel $(PIP_FLAGS) --no-deps -w $(GPU_WHEELS) $(GPU_PURE_PACKAGES) $(PIP_NOISE)
	$(PIP) download $(PIP_FLAGS) --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
		--platform $(GPU_PLATFORM) -d $(GPU_WHEELS) $(GPU_BINARY_PACKAGES) $(PIP_NOISE)
	@ls -la $(GPU_WHEELS)

gpu-check: ## On a CUDA machine: gpu tests, 1.3B-shaped DMD updates under FSDP2, streaming FPS; JSON in GPU_CHECK_OUT
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_PY) -c "import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sorted(glob.glob('$(GPU_WHEELS)/*.whl'))]" $(GPU_SITE); \
		echo "unpacked $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels into $(GPU_SITE)"; \
	else \
		echo "WARNING: no wheels in $(GPU_WHEELS) (make gpu-wheels on a machine with network); the check uses what the image has" >&2; \
	fi
	PYTHONPATH=src:$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PY) -m sfpp.apps.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# The rehearsal of the GPU run: a venv holding only what the GPU image holds (GPU_IMAGE_PACKAGES,
# from the package registry) gets the carried wheels (built for its own Python) through make
# gpu-check's unpacking, then runs the check with tiny shapes on the CPU.
GPU_REHEARSAL_DIR ?= /tmp/sfpp-gpu-rehearsal
GPU_IMAGE_PACKAGES := torch==$(TORCH_VERSION) lightning peft transformers einops torchmetrics
GPU_REHEARSAL_PY = $(GPU_REHEARSAL_DIR)/venv/bin/python

gpu-rehearsal: install ## make gpu-check-cpu in a venv of the GPU image's packages plus the carried wheels only
	rm -rf $(GPU_REHEARSAL_DIR) && $(PY) -m venv $(GPU_REHEARSAL_DIR)/venv
	$(GPU_REHEARSAL_PY) -m pip install $(PIP_FLAGS) $(GPU_IMAGE_PACKAGES) $(PIP_NOISE)
	$(MAKE) --no-print-directory gpu-wheels GPU_WHEELS=$(GPU_REHEARSAL_DIR)/wheels \
		GPU_PYTHON_VERSION=$$($(GPU_REHEARSAL_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	$(MAKE) --no-print-directory gpu-check GPU_PY=$(GPU_REHEARSAL_PY) GPU_WHEELS=$(GPU_REHEARSAL_DIR)/wheels \
		GPU_SITE=$(GPU_REHEARSAL_DIR)/site GPU_CHECK_OUT=$(GPU_REHEARSAL_DIR)/gpu_check.json GPU_CHECK_ARGS=--rehearsal

gpu-check-cpu: install ## The GPU check's rehearsal: the same script with tiny shapes on this CPU
	$(PYTHON) -m sfpp.apps.gpu_check --rehearsal --out artifacts/gpu_check_rehearsal.json

lint: install ## Check style: ruff check and ruff format --check
	$(BIN)/ruff check $(SRC_DIRS)
	$(BIN)/ruff format --check $(SRC_DIRS)

format: install ## Fix what ruff can fix and reformat the code
	$(BIN)/ruff check --fix $(SRC_DIRS)
	$(BIN)/ruff format $(SRC_DIRS)

clean: ## Remove caches, build artefacts and run outputs (keeps .venv)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	rm -rf outputs multirun lightning_logs

distclean: clean ## Like clean, and remove .venv too
	rm -rf $(VENV)
