# One command each: `make serve` runs the server on the embedded models, `make test` runs the
# whole suite. Both set everything up first (`make install`), idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UNAME := $(shell uname -s)
ifeq ($(UNAME),Linux)
EXTRAS := cpu,dev
else
EXTRAS := dev
endif

.PHONY: install blas serve test lint bench bench-asr clean

install: $(STAMP) blas
	$(VENV)/bin/mlxd import --embedded

# mlx-vlm (vision-language models) declares datasets, opencv, mlx-audio, …; the model and
# processor code mlxd runs needs none of them, so it is installed without its dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps mlx-vlm==0.7.10
	touch $(STAMP)

# Linux only: MLX's CPU wheel bundles a slow reference BLAS; mlxd preloads OpenBLAS when present.
blas:
	@if [ "$(UNAME)" = "Linux" ] && ! $(PY) -m engines.blas --check >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null \
			|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null; }; \
		else \
			echo "mlxd: OpenBLAS not found; CPU inference will be slow. Install it:"; \
			echo "  Debian/Ubuntu: sudo apt-get install libopenblas0-pthread"; \
			echo "  Fedora: sudo dnf install openblas   Arch: sudo pacman -S openblas"; \
			echo "  then set MLXD_BLAS_PATH if it is not found automatically (see docs/configuration.md)"; \
		fi; \
	fi

serve: install
	$(VENV)/bin/mlxd serve

lint: $(STAMP)
	$(VENV)/bin/ruff check server engines tests bench
	$(VENV)/bin/ruff format --check server engines tests bench
	$(VENV)/bin/mypy

test: install lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

bench: install
	$(PY) bench/decode.py

# mlx-whisper is the baseline of bench/asr.py. It declares torch (for conversion only), so it is
# installed without its dependencies, and the ones its transcribe() imports are pinned here.
bench-asr: install
	$(PY) -m pip install -q --no-deps mlx-whisper==0.4.3
	$(PY) -m pip install -q tiktoken==0.14.0 numba==0.68.1 scipy==1.17.1 more-itertools==11.2.1 huggingface_hub==2.4.0
	$(PY) bench/asr.py --runs 5 --long-runs 2 --concurrency 8

clean:
	rm -rf $(VENV) build *.egg-info
