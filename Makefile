# seqrec: `make demo` runs the quickstart, `make test` runs lint + tests. Both set up .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
PLUGINS := $(wildcard plugins/seqrec-*)

.PHONY: install demo test test-slow test-all lint format typecheck clean bench browser docs docs-serve reliability

$(STAMP): pyproject.toml constraints.txt $(wildcard plugins/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,text,ann,spark]" $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/seqrec quickstart --project demo

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

# headless Chromium for tests/test_report_browser.py (Debian's package; sudo unless root)
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:
	test -x /usr/bin/chromium || ($(SUDO) apt-get install -y chromium chromium-driver || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver))

# `make test` (CI) leaves out the tests marked slow (end-to-end walks through the README and the
# plugin guide, kills of retrain at each step, serving under load...: 13 minutes more on 2 cores);
# `make test-slow` runs those alone, `make test-all` both. The fault-injection suite
# (tests/reliability) runs alone with `make reliability`.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
test: lint browser
	$(PYTEST) -m "not reliability and not slow"

test-slow: install browser
	$(PYTEST) -m "slow and not reliability"

test-all: lint browser
	$(PYTEST) -m "not reliability"

# the spark-redis profile's test alone (pyspark in local[1], Java 17, PostgreSQL, Redis): its
# training sets equal the embedded and postgres-redis ones; the result goes to
# bench/results/spark_redis.json (the test runs under `make test` too)
.PHONY: test-spark
test-spark: install
	SEQREC_SPARK_RESULT=bench/results/spark_redis.json $(PYTEST) tests/test_spark_redis.py

# the property tests alone (hypothesis, generated bad input; they run under `make test` too);
# SEQREC_PROPERTY_EXAMPLES=500 runs more examples per test
.PHONY: property
property: install
	$(PYTEST) -m property tests/property

# the fault-injection suite and the bad-input property tests; writes the table of both to
# bench/results/reliability.json and docs/reliability.md
reliability: install
	SEQREC_RELIABILITY_REPORT=1 $(PYTEST) -m "reliability or property" tests/reliability tests/property

# the docs site (mkdocs-material, dev extra): `make docs` builds site/, `make docs-serve` serves
# it with live reload; tests/test_docs.py runs the same strict build under `make test`
DOCS_ENV := NO_MKDOCS_2_WARNING=1
docs: install
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

docs-serve: install
	$(DOCS_ENV) $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo site .pytest_cache .ruff_cache .mypy_cache

bench: install
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	@echo "benchmarks: python bench/ml100k.py --with-peer | bench/feature_store.py | bench/classification.py"
	@echo "soak: python bench/soak.py (10 min: outage, promotion, RSS; --quick: 2-minute smoke run)"
