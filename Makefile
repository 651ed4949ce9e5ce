# The README's two commands: `make compress` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORPUS ?= corpus/default
STAMP  := $(VENV)/.installed

.PHONY: setup corpus compress test clean
setup: $(STAMP)

# Reinstall when the package metadata, the build or the native sources change.
$(STAMP): pyproject.toml setup.py CMakeLists.txt scripts/install-system-deps.sh $(wildcard csrc/*)
	bash scripts/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

corpus: setup
	@test -f $(CORPUS)/summary.json || $(PY) -m pipeline data build --preset default --out $(CORPUS)

# Until the trained baseline ships in assets/baseline (issue 3), compress the training run's best checkpoint.
BASELINE := $(firstword $(wildcard assets/baseline/model.safetensors) runs/baseline/best.safetensors)

compress: corpus
	$(PY) -m pipeline compress --model $(BASELINE) --data $(CORPUS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf build *.egg-info pipeline/_native*.so
