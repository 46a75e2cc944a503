# Two commands: `make demo` and `make test`, each from a fresh clone with nothing installed by hand.
#
# CPU hosts get the CPU build of torch (torch==2.13.0; pip finds it on these machines' local wheel
# path) before the project is installed, so that the dependency range never pulls a multi-GB CUDA
# build. Hosts with an NVIDIA GPU install the `gpu` extra instead (CUDA torch from PyPI, Triton,
# onnxruntime-gpu).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes || echo no)
TORCH_CPU ?= torch==2.13.0
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

ifeq ($(HAS_GPU),yes)
RUN_EXTRAS := gpu
DEV_EXTRAS := dev,gpu
else
RUN_EXTRAS := kernels
DEV_EXTRAS := dev
endif

.PHONY: demo test lint install install-dev bench clean browser pacs node-example contract-blas

demo: $(VENV)/.installed-run
	$(BIN)/xal demo

test: $(VENV)/.installed-dev browser pacs node-example
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory contract-blas
	$(BIN)/python -m pytest -n 2 --doctest-modules tests xal_core

# The scoring contract's tests again under other MKL code paths. BLAS libraries sum in a different
# order on different CPUs (MKL on AMD and on Intel), and no result may depend on it: MKL_CBWR makes
# this host take the code path another host takes (AVX2 only where the CPU has it).
CONTRACT_TESTS := tests/test_alignment_contract.py tests/test_flat_rule.py tests/test_threshold_ties.py
contract-blas: $(VENV)/.installed-dev
	MKL_CBWR=COMPATIBLE $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider $(CONTRACT_TESTS)
	@if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then \
		echo "MKL_CBWR=AVX2 $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider $(CONTRACT_TESTS)"; \
		MKL_CBWR=AVX2 $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider $(CONTRACT_TESTS); \
	else echo "this CPU has no AVX2: the MKL_CBWR=AVX2 run of the contract tests is skipped"; fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/scoring_cpu.py
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/forward.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/distributed.py

# The annotator's end-to-end tests drive a real headless Chromium: Debian's chromium and
# chromium-driver (never a browser downloaded at run time). Installed here when missing on a Debian
# host and running as root (as CI does); elsewhere the tests are skipped with this reason shown.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium and chromium-driver (the browser tests)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
		echo "could not install chromium: the browser tests will be skipped (see pytest's summary)"; \
	else echo "no chromium/chromedriver and no root apt-get here: the browser tests will be skipped"; fi

# The PACS tests (tests/pacs) run a real Orthanc with its DICOMweb plugin on 127.0.0.1 and check
# every exported SEG/SR with dciodvfy: Debian's orthanc, orthanc-dicomweb and dicom3tools. Installed
# here when missing on a Debian host and running as root (as CI does); elsewhere the tests are
# skipped with this reason shown. The package's own Orthanc service is not started (policy-rc.d in
# containers; the tests start their own server on a free port).
PACS_PACKAGES := orthanc orthanc-dicomweb dicom3tools
pacs:
	@if command -v Orthanc >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 && \
		ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's $(PACS_PACKAGES) (the PACS tests)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $(PACS_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(PACS_PACKAGES) >/dev/null 2>&1; } || \
		echo "could not install $(PACS_PACKAGES): the PACS tests will be skipped (see pytest's summary)"; \
	else echo "no Orthanc/dciodvfy and no root apt-get here: the PACS tests will be skipped"; fi

# The Node.js client of the scoring service (examples/node) and its test (tests/service/test_node_client.py):
# its npm packages, exactly those of its package-lock.json (`npm ci`), installed where node and npm
# exist and the lock file is newer than the last install; elsewhere the test is skipped with this
# reason shown.
node-example:
	@if [ examples/node/node_modules/.package-lock.json -nt examples/node/package-lock.json ]; then :; \
	elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		echo "installing examples/node's npm packages (npm ci)"; \
		(cd examples/node && npm ci --no-audit --no-fund --loglevel=error) || \
		echo "npm ci failed: the Node.js client test will be skipped (see pytest's summary)"; \
	else echo "no node/npm here: the Node.js client test will be skipped"; fi

install: $(VENV)/.installed-run
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	@if [ "$(HAS_GPU)" = no ]; then echo "no NVIDIA GPU: installing the CPU build $(TORCH_CPU)"; $(PIP) "$(TORCH_CPU)"; fi
	$(PIP) -e ".[$(RUN_EXTRAS)]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@if [ "$(HAS_GPU)" = no ]; then echo "no NVIDIA GPU: installing the CPU build $(TORCH_CPU)"; $(PIP) "$(TORCH_CPU)"; fi
	$(PIP) -e ".[$(DEV_EXTRAS)]"
	$(PIP) --no-deps "baal>=2.1,<3"  # its hard Jupyter dependency is not needed by the heuristics (pyproject.toml)
	$(PIP) --no-deps "torchxrayvision>=1.2,<2"  # cxr-sim's annotation tables; its deps would replace the CPU torch
	@touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
