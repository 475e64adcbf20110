PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ann2snn-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ann2snn demo

test: $(STAMP)
	$(BIN)/ruff check ann2snn tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/ann2snn bench --help >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
