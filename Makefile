# The two commands of the README's quick start. Each one sets up, then runs.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt

.PHONY: demo test

demo:
	$(PIP) -e .
	$(PYTHON) -m edge_sel demo --overwrite

test:
	$(PIP) -e ".[dev,ort,fleet]"
	$(PYTHON) -m pytest -q
