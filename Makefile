# Two entry points for a fresh machine: `make serve` and `make test`.
# Everything is installed into a project-local virtualenv; nothing is needed beforehand but python3.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test install install-test clean backend native

# --- GPU backend and native projector (native/README.md) ---------------------------------------------------
# BACKEND: default (pip's build of the pinned llama-cpp-python: CPU on Linux, Metal on Apple Silicon; nothing
# is rebuilt), cpu, cuda, metal or vulkan (llama-cpp-python rebuilt from source with the matching CMake flags,
# onnxruntime-gpu for cuda). CUDA_ARCHS: CMAKE_CUDA_ARCHITECTURES for BACKEND=cuda (87 Jetson Orin, 86/89 RTX
# 30xx/40xx; 120 RTX 50xx). ORT_PACKAGE: an onnxruntime distribution or wheel to use instead (Jetson wheels).
BACKEND ?= default
CUDA_ARCHS ?= 86;87;89
ORT_PACKAGE ?=
BACKEND_STAMP := $(VENV)/.backend-$(BACKEND)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel setuptools

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# Chromium for the chat-page test comes from Debian (Playwright's own browser download is not used). Where
# apt-get is missing or not permitted this only warns, and that one test is skipped.
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update && apt-get install -y --no-install-recommends chromium); } || \
	  echo "WARNING: chromium not installed; the chat-page test will be skipped" >&2
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(BACKEND_STAMP): $(VENV)/.installed native/install_backend.py
	@rm -f $(VENV)/.backend-*
	$(PY) native/install_backend.py --backend '$(BACKEND)' --cuda-archs '$(CUDA_ARCHS)' $(if $(ORT_PACKAGE),--ort-package '$(ORT_PACKAGE)')
	@touch $@

backend: $(BACKEND_STAMP)

# The projector library (native/build/) against the venv's ggml. Outside CI a failed build only warns: the
# runtime then uses the numpy projector and says so. With CI=true it is an error.
native: backend
	@$(MAKE) --no-print-directory -C native PYTHON=$(abspath $(PY)) || { \
	  if [ "$(CI)" = "true" ] || [ "$(CI)" = "1" ]; then echo "native projector build failed (fatal with CI=$(CI))" >&2; exit 1; fi; \
	  echo "WARNING: native projector not built; glm-edge falls back to the numpy projector" >&2; }

serve: install native
	$(VENV)/bin/glm-edge serve $(MODEL) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: install-test native
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info native/build
