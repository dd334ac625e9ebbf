# Two entry points: `make test` and `make demo`. Both create .venv when it is absent and
# install the project under the pinned torch/torchvision of constraints.txt.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
DEMO   ?= runs/demo

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,plot,export]'
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q

demo: $(STAMP)
	DEMO=$(DEMO) PY=$(PY) bash scripts/demo.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
