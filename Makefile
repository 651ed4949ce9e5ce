# The README's two commands: `make compress` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORPUS ?= corpus/default
STAMP  := $(VENV)/.installed

.PHONY: setup corpus compress test test-fast native-check fuzz-check checksums clean baseline-asset
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

# The shipped baseline, assets/baseline/model.safetensors, is compress's default model.
compress: corpus
	$(PY) -m pipeline compress --data $(CORPUS)

# Ship the training run's best checkpoint as the default model, with its WER per split and its model card.
baseline-asset: corpus
	mkdir -p assets/baseline
	cp runs/baseline/best.safetensors assets/baseline/.model.tmp && mv assets/baseline/.model.tmp assets/baseline/model.safetensors
	$(PY) benchmarks/baseline_wer.py --model assets/baseline/model.safetensors --data $(CORPUS) --out results/baseline_wer.json
	$(PY) benchmarks/model_card.py --model assets/baseline/model.safetensors --run runs/baseline \
		--wer results/baseline_wer.json --out assets/baseline/MODEL_CARD.md
	$(MAKE) checksums

test: setup
	$(PY) -m pytest

# The inner loop: everything but the end-to-end tests.
test-fast: setup
	$(PY) -m pytest -m "not slow"

# The C++ checks: kernels on every SIMD path against PyTorch, the aarch64 build under qemu, kernel_check.
native-check: setup
	$(PY) -m pytest tests/test_native.py tests/test_lstm_kernel.py tests/test_native_asr.py

# The C++ readers of untrusted files under ASan and UBSan: sanitized checks, regression inputs, then
# FUZZ_SECONDS of libFuzzer per target (tests/fuzz/README.md).
FUZZ_BUILD   ?= build/fuzz
FUZZ_SECONDS ?= 60
fuzz-check: setup
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_CXX_COMPILER=clang++-14 -DLRK_PYTHON=OFF -DLRK_SANITIZE=address,undefined \
		-DLRK_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(FUZZ_BUILD) --parallel 2 >/dev/null
	$(PY) scripts/fuzz_check.py --build $(FUZZ_BUILD) --seconds $(FUZZ_SECONDS)

# After a deliberate change under assets/ (tests/test_repository.py checks the list).
checksums:
	cd assets && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS

clean:
	rm -rf build *.egg-info pipeline/_native*.so
