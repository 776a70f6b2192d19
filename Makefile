# The two commands of the README:  make lab  (open the course)  and  make test  (run every test).
# Both create .venv on first use and install the course into it; a machine with an NVIDIA
# driver also gets CuPy. Override with  make PYTHON=python3.12 ...  or  make CUPY=none ...
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CUPY: auto (pick from nvidia-smi), none, or a pip requirement such as cupy-cuda12x.
CUPY   ?= auto
# TORCH: auto (the dist extra, torch.distributed for lesson 13, unless a torch is there) or none.
TORCH  ?= auto
LAB_ARGS ?=
TEST_ARGS ?=

.PHONY: lab test browser exercises gpu-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
# -qq: setuptools' notes on editable installs are not for learners; errors still show.
	$(PY) -m pip install -qq -e ".[lab,test]"
	@cupy="$(CUPY)"; \
	if [ "$$cupy" = auto ]; then \
	  cuda=$$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n1); \
	  case "$$cuda" in "") cupy=none;; 1[3-9]) cupy=cupy-cuda13x;; *) cupy=cupy-cuda12x;; esac; \
	fi; \
	if [ "$$cupy" = none ]; then echo "No NVIDIA driver found: kernels will run on the CPU executor."; \
	else echo "Installing $$cupy for the GPU"; \
	  $(PY) -m pip install --quiet "$$cupy" || echo "WARNING: $$cupy did not install; the course still runs on the CPU executor."; fi
# Without an NVIDIA driver on Linux, PyTorch's CPU index (where it can be reached) gives the
# 0.2 GB CPU build instead of PyPI's several-GB CUDA build (lesson 13 runs gloo on CPUs).
	@if [ "$(TORCH)" != none ] && ! $(PY) -c 'import torch' 2>/dev/null; then \
	  cpu_index=""; \
	  url=https://download.pytorch.org/whl/cpu; \
	  if [ "$$(uname -s)" = Linux ] && ! nvidia-smi > /dev/null 2>&1 \
	     && $(PY) -c "import urllib.request as u; u.urlopen('$$url/', timeout=10)" 2>/dev/null; then \
	    cpu_index="--extra-index-url $$url"; fi; \
	  $(PY) -m pip install -qq $$cpu_index -e ".[dist]" \
	  || echo "WARNING: torch did not install; lesson 13's processes and tests/test_distributed.py will say so and skip."; fi
	@touch $@

# Jupyter refuses to start as root unless told; containers and CI often run as root.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(ROOT_FLAG) $(LAB_ARGS) notebooks/00_why_paging.ipynb

test: $(STAMP) browser
	$(PY) -m pytest -n 2 --dist loadfile --nbval notebooks solutions tests $(TEST_ARGS)

# What the browser test needs: Python's playwright in .venv (it drives the system's Chromium,
# never downloads a browser) and Debian's chromium, installed here only as root with apt (as
# in CI). Where either cannot be had, the test is skipped and says why; nothing fails here.
browser: $(STAMP)
	@$(PY) -c 'import playwright' 2>/dev/null || $(PY) -m pip install -qq -e ".[browser]" \
	  || echo "WARNING: playwright did not install; the browser test will be skipped."
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's chromium for the browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium; } >/dev/null 2>&1 \
	  || echo "WARNING: chromium did not install; the browser test will be skipped."; \
	fi

exercises: $(STAMP)
	$(PY) -m pagedattn_lab.exercises

# Everything that needs a GPU, in one call (see .ci/gpu_check.sh); writes under $$OUT.
gpu-check:
	bash .ci/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
