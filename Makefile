PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench screenshots clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# two workers, a file each at a time: most tests wait on processes, servers and disks, so
# two halve the wall time on 2 cores (15-17 min serially, under 10 min with -n 2 measured)
test: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/usageledger demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
