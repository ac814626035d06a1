# Sentinel developer commands. Only python3 (>= 3.9) and make are needed:
# everything else is installed into .venv, and PostgreSQL is started on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: help screenshots generate bench-publish chaos-publish chaos-ha chaos-ha-publish chaos-ha-pgaf chaos-ha-pgaf-publish venv test pytest pgtap demo lint typecheck check pgtap-deps wheel clean test-other-languages django-example bench bench-quick chaos

help:
	@echo "make demo        8 workers race on one key; a killed worker goes uncertain; an operator reconciles"
	@echo "make test        pytest and the pgTAP suite against a throwaway PostgreSQL"
	@echo "make generate    write python/sentinel/_client.py from its asyncio source _client_async.py"
	@echo "make check       ruff, mypy --strict, squawk on the migrations, the docs site (make docs)"
	@echo "make chaos       fault injection (~2.5 min): kills, zombies, dropped backends, crash restarts, PgBouncer"
	@echo "make chaos-ha    failovers (~2 min): a primary SIGKILLed under load, its standby promoted; sync and async"
	@echo "make chaos-ha-pgaf  failovers decided by a pg_auto_failover monitor (~1 min; apt-get install -y postgresql-15-auto-failover)"
	@echo "make bench-publish  the latest bench run becomes the figures of docs/performance.md"
	@echo "make bench       benchmark against floors measured in the same run (under 10 min, bench/results/latest.json)"
	@echo "make test-other-languages  the psql and Node.js clients and the cross-language race (needs node, npm)"
	@echo "make django-example  the Django example shop (examples/django) on a throwaway PostgreSQL"
	@echo "make pgtap-deps  install pgTAP and pg_prove (Debian, as root)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) tests/pgserver.py test

pytest: venv
	$(PY) tests/pgserver.py pytest

pgtap: venv
	$(PY) tests/pgserver.py pgtap

test-other-languages: venv
	npm ci --prefix examples/node
	$(PY) tests/pgserver.py run -- bash examples/psql/test.sh
	$(PY) tests/pgserver.py run -- bash -c 'cd examples/node && npm test'
	$(PY) tests/pgserver.py pytest tests/test_cross_language.py -q

django-example: venv
	$(PY) tests/pgserver.py run -- sh -c 'export SENTINEL_DJANGO_DSN="$$SENTINEL_TEST_DSN"; cd examples/django && \
	  $(CURDIR)/$(PY) manage.py migrate -v0 && \
	  DJANGO_SUPERUSER_PASSWORD=secret $(CURDIR)/$(PY) manage.py createsuperuser --noinput --username alice --email alice@example.com && \
	  $(CURDIR)/$(PY) manage.py runserver'

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: venv $(VENV)/.bench-installed
	$(PY) bench/run.py

bench-quick: venv $(VENV)/.bench-installed
	$(PY) bench/run.py --quick

# The latest full run becomes the figures of docs/performance.md.
bench-publish:
	mkdir -p docs/results
	cp bench/results/latest.json docs/results/bench.json
	$(PY) tools/publish_results.py

chaos: venv
	$(PY) chaos/run.py --json chaos/results/latest.json

# The latest full chaos run becomes the summary in docs/testing.md.
chaos-publish:
	mkdir -p docs/results
	cp chaos/results/latest.json docs/results/chaos.json
	$(PY) tools/publish_results.py

# A primary and a streaming standby: SIGKILL, promote, re-seed, under load (docs/ha.md). SEED=N replays both runs.
chaos-ha: venv
	$(PY) chaos/ha.py --mode sync $(if $(SEED),--seed $(SEED)) --json chaos/results/ha-sync.json
	$(PY) chaos/ha.py --mode async $(if $(SEED),--seed $(SEED)) --json chaos/results/ha-async.json

# The latest chaos-ha runs become the figures of docs/ha.md.
chaos-ha-publish:
	mkdir -p docs/results
	cp chaos/results/ha-sync.json docs/results/ha-sync.json
	cp chaos/results/ha-async.json docs/results/ha-async.json
	$(PY) tools/publish_results.py

# Failovers with pg_auto_failover as the HA manager (needs: apt-get install -y postgresql-15-auto-failover).
chaos-ha-pgaf: venv
	$(PY) chaos/ha.py --manager pg_auto_failover $(if $(SEED),--seed $(SEED)) --json chaos/results/ha-pgaf.json

# The latest chaos-ha-pgaf run becomes the pg_auto_failover figures of docs/ha.md.
chaos-ha-pgaf-publish:
	mkdir -p docs/results
	cp chaos/results/ha-pgaf.json docs/results/ha-pgaf.json
	$(PY) tools/publish_results.py

demo: venv
	$(PY) examples/demo.py

# The pictures of docs/operator-page.md: sentinel web in headless Chromium (apt-get install -y chromium).
screenshots: venv
	$(PY) tests/pgserver.py run -- $(PY) tools/screenshot_web.py

lint: venv
	$(PY) tools/async_to_sync.py --check
	$(PY) tools/build_schema.py --check
	$(PY) tools/gen_protocol.py --check
	$(PY) tools/publish_results.py --check
	$(PY) -m ruff check python tests examples bench chaos tools
	$(VENV)/bin/squawk sql/migrations/*.sql

# The sync client, generated from its asyncio source (see docs/testing.md).
generate: venv
	$(PY) tools/async_to_sync.py

# mypy --strict for every Python the package claims (requires-python >= 3.10).
typecheck: venv
	for v in 3.10 3.11 3.12 3.13; do $(PY) -m mypy --python-version $$v || exit 1; done

# The documentation site (MkDocs Material, built into site/ with --strict), after the link check.
docs: venv
	$(PY) tools/check_docs.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

check: lint typecheck docs

pgtap-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl

wheel: venv
	$(PY) -m pip wheel --quiet --no-deps -w dist .

clean:
	rm -rf $(VENV) dist build site .pytest_cache .mypy_cache .ruff_cache
