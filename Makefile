PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The onnxruntime build in the venv: cpu (package onnxruntime, the default) or gpu (onnxruntime-gpu, CUDA on Linux
# x86-64). The two install the same `onnxruntime` module and break each other, so setup removes the other one first;
# `make setup ORT=gpu` swaps the build, `make setup` swaps it back.
ORT ?= cpu
ifeq ($(ORT),cpu)
OTHER_ORT := onnxruntime-gpu
else ifeq ($(ORT),gpu)
OTHER_ORT := onnxruntime
else
$(error ORT must be cpu or gpu, not '$(ORT)')
endif
STAMP := $(VENV)/.ann2snn-installed-$(ORT)
DOCS_STAMP := $(VENV)/.ann2snn-docs-installed

.PHONY: setup demo test docs wheel bench clean

# A venv holding the other build (an older setup installed onnxruntime-gpu) loses both builds before the install:
# uninstalling one of two deletes files that the other one needs, so the wanted one is installed again afterwards.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	rm -f $(VENV)/.ann2snn-installed*
	if $(BIN)/python -m pip show -q $(OTHER_ORT) >/dev/null 2>&1; then for p in onnxruntime onnxruntime-gpu; do \
		if $(BIN)/python -m pip show -q $$p >/dev/null 2>&1; then $(BIN)/python -m pip uninstall -q -y $$p; fi; done; fi
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[$(ORT),dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ann2snn demo

test: $(STAMP)
	$(BIN)/ruff check ann2snn tests bench $(wildcard examples)
	$(BIN)/python -m pytest -q

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[$(ORT),docs]'
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml) into site/; --strict turns every warning into an error.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

# The wheel into dist/ (.ci/run installs it into a fresh venv).
wheel: $(STAMP)
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

bench: $(STAMP)
	$(BIN)/ann2snn bench --help >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache build dist site *.egg-info
