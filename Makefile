# Two entry points: `make test` and `make demo`. Both create .venv when it is absent and
# install the project under the pinned torch/torchvision of constraints.txt. `make test` then
# runs the suite a second time in .venv-floors, where every dependency is at the lowest version
# pyproject.toml allows (constraints-floors.txt), so the declared ranges are tested ranges.
VENV   ?= .venv
FLOORS ?= .venv-floors
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
FLOORS_PY    = $(FLOORS)/bin/python
FLOORS_STAMP = $(FLOORS)/.installed-stamp
DEMO   ?= runs/demo
THREADS = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2}

.PHONY: test test-pinned test-floors demo install install-floors clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,plot,export,tensorboard]'
	touch $(STAMP)

install-floors: $(FLOORS_STAMP)

# A fresh venv whenever pyproject or the floors change: the run tests what a new install at the
# floors gets, with nothing left over from the previous resolution.
$(FLOORS_STAMP): pyproject.toml constraints-floors.txt
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS_PY) -m pip install -q --upgrade pip
	$(FLOORS_PY) -m pip install -q -c constraints-floors.txt -e '.[test,plot,tensorboard,export]'
	touch $(FLOORS_STAMP)

test: test-pinned test-floors

test-pinned: $(STAMP)
	$(THREADS) $(PY) -m pytest -q

test-floors: $(FLOORS_STAMP)
	$(THREADS) $(FLOORS_PY) -m pytest -q

demo: $(STAMP)
	DEMO=$(DEMO) PY=$(PY) bash scripts/demo.sh

clean:
	rm -rf $(VENV) $(FLOORS) runs .pytest_cache
