# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

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

test: $(STAMP)
	$(PY) -m pytest -q -ra

clean:
	rm -rf runs .pytest_cache
