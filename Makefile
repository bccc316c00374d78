# vigil — `make help` lists the targets. Set-up on a fresh machine: `make demo`, then `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install install-train install-prometheus lock train demo test lint bench ci clean topics-doc

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Every dependency, direct and transitive, at the version in constraints.txt (the lock file, generated from
# pyproject.toml by `make lock`): a fresh install gets the versions the tests ran with, not the newest of the day.
LOCK := constraints.txt

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install vigil with the test tools
	@echo "installed: $$($(BIN)/vigil --help | head -1)"

TRAIN_STAMP := $(VENV)/.installed-train
# LightGBM's wheel links the system OpenMP runtime (Debian: libgomp1); installed with apt-get when missing.
$(TRAIN_STAMP): $(STAMP)
	@ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1 ' || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1; }
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev,train]'
	@touch $(TRAIN_STAMP)

install-train: $(TRAIN_STAMP) ## Add the trainer extra (TensorFlow, tf2onnx, LightGBM, onnxmltools) to .venv

# Refresh the lock after changing dependencies in pyproject.toml (uv is installed into .venv for this only);
# commit constraints.txt. Resolved for Linux (the deployment platform), Python 3.11, every extra.
lock: $(STAMP) ## Regenerate constraints.txt (the lock file) from pyproject.toml with `uv pip compile`
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra train --python-version 3.11 --python-platform linux \
	  --no-header --quiet -o $(LOCK).new
	{ echo "# The lock file: every dependency of vigil (main, [dev], [train]) at one version; \`make install\` uses it"; \
	  echo "# (pip install -c constraints.txt -e .[dev]). Refresh: make lock (uv pip compile pyproject.toml ...)."; \
	  cat $(LOCK).new; } > $(LOCK) && rm -f $(LOCK).new

# Debian's prometheus package ships /usr/bin/prometheus and /usr/bin/promtool (tests/test_prometheus.py).
# Skipped when promtool is on PATH. Without systemd (containers) nothing is started; where systemd runs, the
# packaged service listens on :9090 — the tests use their own Prometheus on a free port either way.
install-prometheus: ## Install Debian's prometheus package (prometheus, promtool) unless promtool is on PATH
	@command -v promtool >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }
	@promtool --version 2>&1 | head -1

train: install-train ## Train every model family on full set A into models/ (see README: Training)
	$(BIN)/vigil train --family all

demo: install ## Run the whole system end to end on the embedded broker (ends by itself)
	$(BIN)/vigil demo

test: install-train install-prometheus ## Lint, then the test suite (unit + integration on the embedded broker, real TensorFlow, real Prometheus)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest src tests -q -p no:cacheprovider

lint: install ## ruff
	$(BIN)/ruff check src tests

bench: install ## Benchmarks (not tests): throughput vs raw aiokafka and naive Faust; writes docs/benchmarks.md
	$(BIN)/python -m vigil.tools.bench --out docs/benchmarks.md

topics-doc: install ## Regenerate docs/topics.md from streams/
	$(BIN)/vigil topics docs > docs/topics.md

ci: test ## Exactly what CI runs (.ci/run)

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
