# sipedge developer entry points (GNU make).  `make help` lists them.
#
# Everything lands in the repository: the venv in .venv/ (with the C extension
# built in place by the editable install) and the dev certificate in .sipedge/.
# Stamp files keep a second `make test` from reinstalling anything.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

# Debian's python3 (PGO + LTO) over a pyenv build first on PATH: scripts/pick-python says why.
PYTHON ?= $(shell scripts/pick-python)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.sipedge-installed
CERT_DIR := .sipedge
CERT := $(CERT_DIR)/dev-cert.pem
KEY := $(CERT_DIR)/dev-key.pem
CONFIG ?= configs/dev.toml
PYTEST_ARGS ?=
BENCH_INSTALLED := $(VENV)/.sipedge-bench-installed
# The mypyc-compiled signalling hot path (sip/_compiled.py: MODULES, the same list).
COMPILED := build/compiled/manifest.json
COMPILED_SOURCES := sip/errors.py sip/_abnf.py sip/uri.py sip/headers.py sip/message.py \
	sip/transaction.py sip/framing.py sip/validate.py sip/random_tokens.py edge/timestamps.py edge/timer_wheel.py \
	edge/audit.py edge/dialogs.py edge/routing.py edge/admission.py edge/proxy_state.py \
	edge/proxy_media.py edge/proxy.py edge/flows.py edge/transport.py edge/metrics.py
FUZZ_DATAGRAMS ?= 200000
FUZZ_SECONDS ?= 120
FUZZ_SEED ?= 7
FUZZ_SIP_CASES ?= 20000

.PHONY: help deps venv install devcert run lint format test bench fuzz-asan clean distclean

help:
	@echo "make install    .venv with sipedge editable + test extras, C extension and compiled core built"
	@echo "                (as root, apt-gets missing Debian packages first: scripts/debian-deps.sh)"
	@echo "make devcert    self-signed dev certificate in $(CERT_DIR)/"
	@echo "make run        install + devcert, then sipedge run --config $(CONFIG)"
	@echo "make lint       ruff check, ruff format --check, mypy (strict on sip/)"
	@echo "make format     ruff format + ruff check --fix (rewrites files)"
	@echo "make test       install + devcert, lint, then the whole pytest suite"
	@echo "make bench      run bench/bench_*.py (installs the bench extra: matplotlib)"
	@echo "make fuzz-asan  fuzz the C data plane, SIP tokenizer, value parsers and header checks under ASan + UBSan"
	@echo "                (FUZZ_DATAGRAMS=$(FUZZ_DATAGRAMS) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED)"
	@echo "                FUZZ_SIP_CASES=$(FUZZ_SIP_CASES))"
	@echo "make clean      remove the venv, build output and caches (distclean: also $(CERT_DIR)/)"

# Cheap (dpkg-query only) when nothing is missing, so it runs on every install.
deps:
	@PYTHON=$(PYTHON) scripts/debian-deps.sh

$(BIN)/python: | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# SIPEDGE_STRICT_BUILD=1: the C extension must compile without a warning (-Werror).
$(INSTALLED): pyproject.toml setup.py $(wildcard media/*.c media/*.h) | $(BIN)/python deps
	SIPEDGE_STRICT_BUILD=1 $(BIN)/python -m pip install --progress-bar off -e '.[test]'
	$(BIN)/python -c 'import media._srtp as s; print("media._srtp:", s.backend(), s.openssl_version())'
	touch $@

# Profile-guided with GCC: scripts/pgo_train.py proxies calls through bench/bench_proxy_core.py
# between the two compiles (SIPEDGE_PGO=0 builds once, without a profile).
$(COMPILED): $(COMPILED_SOURCES) sip/_compiled.py scripts/build_compiled.py scripts/pgo_train.py \
		bench/bench_proxy_core.py | $(INSTALLED)
	$(BIN)/python scripts/build_compiled.py

venv install: $(INSTALLED) $(COMPILED)

$(CERT) $(KEY) &:
	scripts/devcert.sh $(CERT_DIR)

devcert: $(CERT) $(KEY)

run: install devcert
	$(BIN)/sipedge run --config $(CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install devcert lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The bench extra (matplotlib, for the relay benchmark's plot) on top of the test one.
$(BENCH_INSTALLED): $(INSTALLED) pyproject.toml
	SIPEDGE_STRICT_BUILD=1 $(BIN)/python -m pip install --progress-bar off -e '.[test,bench]'
	touch $@

bench: install $(BENCH_INSTALLED)
	@DEPS_BENCH=1 PYTHON=$(PYTHON) scripts/debian-deps.sh
	@shopt -s nullglob; scripts=(bench/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "bench: no bench/bench_*.py yet"; exit 0; fi; \
	for f in "$${scripts[@]}"; do echo "== $$f"; $(BIN)/python "$$f"; done

# media._srtp built with -fsanitize=address,undefined into build/asan/ (the in-place
# build stays as it is), canaries first, then bounded fuzz runs of the C data plane and
# of the SIP tokenizer against its Python reference: fails on any sanitizer report,
# leak or broken invariant (fuzz/asan_run.py).
fuzz-asan: install
	$(BIN)/python fuzz/asan_run.py --datagrams $(FUZZ_DATAGRAMS) --seconds $(FUZZ_SECONDS) \
		--seed $(FUZZ_SEED) --sip-cases $(FUZZ_SIP_CASES)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -f media/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(CERT_DIR)
