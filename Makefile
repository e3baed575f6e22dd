# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint browser bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exactly these two, from this machine's disk (see README); pyproject keeps loose bounds for clusters.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m landscape_ray train jobs/quickstart-train.yaml
	$(PY) -m landscape_ray run jobs/quickstart.yaml --overwrite
	@echo "demo done: checkpoints in runs/demo/checkpoints/, surface in runs/demo/surface.zarr, pictures runs/demo/*.png"
	@echo "look inside with: $(PY) -m landscape_ray info runs/demo/surface.zarr"

# The HTML reports are opened in a real headless Chromium by the tests (Debian's package; root or sudo).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

browser: $(CHROMIUM)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -ra

# The inner loop: everything but the end-to-end tests that start several Ray processes (CI runs those too).
test-fast: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -ra -m "not slow"

# Side-by-side benchmarks (benchmarks/RESULTS.md); the peer library is a benchmark-only dependency.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.endtoend
	$(PY) -m benchmarks.peer
	$(PY) -m benchmarks.scale
	$(PY) -m benchmarks.tiles
	$(PY) -m benchmarks.ceiling

lint: $(STAMP)
	$(PY) -m ruff check landscape_ray tests benchmarks jobs
	$(PY) -m ruff format --check landscape_ray tests benchmarks jobs
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
