# zxl — every target that needs Python depends on the venv, so a fresh clone installs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/curate/demo.yaml
ARGS   ?=
# make test runs pytest-xdist workers: one per core (auto), at most 8; JOBS=0 runs in one process
JOBS   ?= auto

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export PYTHONUNBUFFERED := 1

.PHONY: install curate taste-demo ablation browse browser node typecheck train sample grid test bench bench-gpu lint format lock clean help
CATALOG ?= runs/demo/catalog

help:
	@echo "make curate     install if needed, then curate the bundled demo corpus into runs/demo/catalog/"
	@echo "make browse     the catalog browser on http://127.0.0.1:8765 (CATALOG=runs/demo/catalog)"
	@echo "make taste-demo a simulated rater answers 300 pairs of the rate view; zxl taste fit + apply at weigh.diversity 0 and 1"
	@echo "make ablation   does weigh.diversity keep variety in a trained model? 4 demo models, one report (~31 min)"
	@echo "make train      train on the demo catalog (a tiny SDXL on the CPU); real: CONFIG=configs/train/zero-xl.yaml BASE=model.safetensors"
	@echo "make sample     a validation grid (MODEL=.safetensors or diffusers folder; the demo checkpoint without)"
	@echo "make test       the whole test suite (what .ci/run calls)"
	@echo "make bench      CPU benchmarks: a markdown table and JSON under bench/results/"
	@echo "make bench-gpu  GPU benchmarks on a CUDA machine (CLIP scoring, WD, SDXL sampling): JSON under bench/results/"
	@echo "make lint       ruff format check and lint, and the type checker (pyright)"
	@echo "make typecheck  pyright alone (also the first step of make test)"
	@echo "make install    build .venv from constraints.txt (the lock)"

# The lock is constraints.txt: every package, exact version. torch 2.14.1 / torchvision 0.29.1
# come from the machine's local wheel store through pip's own configuration.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

curate: $(STAMP)
	$(BIN)/zxl curate --demo -c $(CONFIG) $(ARGS)

# The taste loop offline: a simulated rater answers 300 pairs in the rate view, then taste fit and apply.
taste-demo: $(STAMP)
	test -f $(CATALOG)/_manifest.json || $(MAKE) curate
	$(BIN)/python docs/taste_demo.py $(ARGS)

browse: $(STAMP)
	test -f $(CATALOG)/_manifest.json || $(MAKE) curate
	$(BIN)/zxl catalog browse $(CATALOG) $(ARGS)

# Training: the demo trains the tiny SDXL-architecture model (random weights, built here) on the
# demo catalog; CONFIG=configs/train/zero-xl.yaml BASE=… trains the recipe on a real base model.
BASE ?=
TINY := .cache/demo-sdxl
DEMO_EXPORT := runs/demo/train/export/demo-step-00002000.safetensors
# the demo's tiny SDXL (its autoencoder trained on the demo images), built once into $(TINY)
DEMO_MODEL = $(BIN)/python -c "from pathlib import Path; from zxl.testing import build_demo_model; \
	p = Path('$(TINY)'); (p / 'model_index.json').exists() or build_demo_model(p, Path('$(CATALOG)'))"
train: CONFIG = configs/train/demo.yaml
train: $(STAMP)
	@if [ "$(CONFIG)" = configs/train/demo.yaml ]; then \
	  test -f $(CATALOG)/_manifest.json || $(MAKE) curate; \
	  $(DEMO_MODEL); fi
	$(BIN)/zxl train -c $(CONFIG) $(if $(BASE),--base $(BASE)) $(ARGS)

# The diversity experiment (bench/ablation.py): a taste that loves one look, weigh.diversity 0 and 1,
# two training seeds each, one zxl eval of the four, runs/ablation/report.md. A killed run resumes.
ablation: $(STAMP)
	test -f $(CATALOG)/_manifest.json || $(MAKE) curate
	$(DEMO_MODEL)
	$(BIN)/python -m bench.ablation $(ARGS)

# A validation grid: from MODEL when given, else from the demo checkpoint (trained first if missing).
MODEL ?=
PROMPTS ?= configs/sample/validation.txt
sample: $(STAMP)
	@if [ -z "$(MODEL)" ]; then \
	  test -f $(DEMO_EXPORT) || $(MAKE) train; \
	  $(BIN)/zxl sample --model $(DEMO_EXPORT) --model-config $(TINY) --prompts configs/sample/demo.txt \
	    --x cfg=3,4,5 --y prompt --out runs/samples/demo $(ARGS); \
	else $(BIN)/zxl sample --model $(MODEL) --prompts $(PROMPTS) --x cfg=3,4,5 --y prompt $(ARGS); fi

grid: sample

# The browser tests drive Debian's chromium through Playwright; installed here, not by hand.
browser:
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The type checker (pyright, the engine of VS Code's Python support) runs on Node.js.
node:
	command -v node >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs; }

typecheck: $(STAMP) node
	$(BIN)/pyright

test: $(STAMP) browser typecheck
	$(BIN)/python -m pytest -n $(JOBS) --maxprocesses 8 --dist loadfile --durations=15 $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# Random-weight models built from their configs, JPEG shards written on the spot: no download.
# ZXL_BENCH_WD_MODEL=folder adds the WD tagger; ARGS=--tiny checks the script on a CPU.
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu $(ARGS)

lint: $(STAMP) node
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/pyright

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-resolve the lock from pyproject.toml's ranges (needs the package registry).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet '.[dev]'
	{ echo "# The lock: exact versions of every package zxl installs (make install uses it as pip constraints)."; \
	  echo "# Regenerate with: make lock"; \
	  .venv-lock/bin/python -m pip list --format=freeze | grep -v '^zxl=='; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf runs .cache bench/results/*.json bench/results/*.md
