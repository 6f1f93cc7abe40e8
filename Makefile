# demo and test are the two commands of the README's quick start; each one sets up, then runs.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt

.PHONY: demo test mutants

demo:
	$(PIP) -e .
	$(PYTHON) -m edge_sel demo --overwrite

# Two workers, a test file each at a time (pytest-xdist): most tests run one torch thread or start
# commands that do, so one worker left a core of two idle; a file's fixtures stay in one worker.
test:
	$(PIP) -e ".[dev,ort,fleet]"
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

# Mutation testing of the device-side modules (not part of `make test`): tools/mutants.py, one
# module at a time with its tests; MODULES="deployed_swap promote" to choose (default: all).
mutants:
	$(PIP) -e ".[dev,ort,mutants]"
	$(PYTHON) tools/mutants.py $(MODULES)
