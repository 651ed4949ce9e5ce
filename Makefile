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

compress: corpus
	@if $(PY) -m pipeline compress --help >/dev/null 2>&1; then \
	  $(PY) -m pipeline compress --data $(CORPUS); \
	else \
	  echo "The corpus is ready in $(CORPUS). 'python -m pipeline compress' does not exist yet:"; \
	  echo "it comes with the issue 'Iterative compression with fine-tuning'. Stopping here."; \
	fi

test: setup
	$(PY) -m pytest

clean:
	rm -rf build *.egg-info pipeline/_native*.so
