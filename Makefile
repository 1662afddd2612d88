# Every target bootstraps its own virtual environment: nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-gateway lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bulk_unenroll.demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check bulk_unenroll tests bench
	$(BIN)/ruff format --check bulk_unenroll tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

# A real nginx (Debian's nginx-light, limit_req at 10/s) in front of the sandbox; about a
# minute, so not part of `make test` (.ci/run calls both). Installs nginx-light with apt-get
# if it is missing (root or passwordless sudo); the test skips, saying so, if that fails.
# On a host with systemd, the package also starts its own nginx service.
test-gateway: $(STAMP)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "installing nginx-light (apt-get) for the gateway test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null \
	       && $$SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null; } \
	  || echo "could not install nginx-light: the gateway test will skip"; }
	$(BIN)/pytest -q -rs -s -m gateway tests/test_gateway.py

# Never part of `make test`. One part: make bench BENCH="--only pacing" (see bench/__main__.py).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-output
