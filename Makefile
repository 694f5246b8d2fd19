# zxl — every target that needs Python depends on the venv, so a fresh clone installs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/curate/demo.yaml
ARGS   ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export PYTHONUNBUFFERED := 1

.PHONY: install curate browse browser sample test bench bench-gpu lint format lock clean help
CATALOG ?= runs/demo/catalog

help:
	@echo "make curate     install if needed, then curate the bundled demo corpus into runs/demo/catalog/"
	@echo "make browse     the catalog browser on http://127.0.0.1:8765 (CATALOG=runs/demo/catalog)"
	@echo "make sample     a validation grid (MODEL=diffusers SDXL folder; a tiny random model without)"
	@echo "make test       the whole test suite (what .ci/run calls)"
	@echo "make bench      CPU benchmarks: a markdown table and JSON under bench/results/"
	@echo "make bench-gpu  GPU benchmarks on a CUDA machine (CLIP scoring, WD, SDXL sampling): JSON under bench/results/"
	@echo "make lint       ruff format check and lint"
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

browse: $(STAMP)
	test -f $(CATALOG)/_manifest.json || $(MAKE) curate
	$(BIN)/zxl catalog browse $(CATALOG) $(ARGS)

# A validation grid: from MODEL when given, else (until the trainer lands) a tiny random
# SDXL-architecture model built here, with small sizes so it runs on a CPU in seconds.
MODEL ?=
PROMPTS ?= configs/sample/validation.txt
sample: $(STAMP)
	@if [ -z "$(MODEL)" ]; then \
	  $(BIN)/python -c "from pathlib import Path; from zxl.testing import build_tiny_sdxl; p = Path('.cache/tiny-sdxl'); (p / 'model_index.json').exists() or build_tiny_sdxl(p)"; \
	  $(BIN)/zxl sample --model .cache/tiny-sdxl --prompts configs/sample/tiny.txt --x cfg=3,4,5 --y prompt \
	    --out runs/samples/tiny $(ARGS); \
	else $(BIN)/zxl sample --model $(MODEL) --prompts $(PROMPTS) --x cfg=3,4,5 --y prompt $(ARGS); fi

# The browser tests drive Debian's chromium through Playwright; installed here, not by hand.
browser:
	test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# Random-weight models built from their configs, JPEG shards written on the spot: no download.
# ZXL_BENCH_WD_MODEL=folder adds the WD tagger; ARGS=--tiny checks the script on a CPU.
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

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
