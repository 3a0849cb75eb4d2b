# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick

.PHONY: setup demo test test-fast pipeline serve app benchmarks lock clean

setup:
	@bash .ci/setup-env

demo: setup
	$(VENV)/bin/lookalike demo --profile $(PROFILE)

pipeline: setup
	$(VENV)/bin/lookalike pipeline --profile $(PROFILE)

serve: setup
	$(VENV)/bin/lookalike serve --profile $(PROFILE)

# The Streamlit app alone, against LOOKALIKE_ENDPOINT (default http://127.0.0.1:5001).
# Streamlit refuses uploads over LOOKALIKE_MAX_UPLOAD_BYTES (default 10 MB, as the app) in MB
# rounded up (lookalike.app_env.upload_size_mb), not its own 200 MB default.
app: setup
	$(PY) -m streamlit run streamlit_app/app.py --server.address 127.0.0.1 --server.headless true \
		--client.toolbarMode minimal \
		--server.maxUploadSize $$(( ($${LOOKALIKE_MAX_UPLOAD_BYTES:-10000000} + 999999) / 1000000 ))

# Two pytest-xdist workers: the two rehearsals start first, one on each (tests/conftest.py).
# TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

test: setup
	$(PY) -m pytest -q $(XDIST)

# The suite without the tests marked slow (real training runs, Horovod, tuning): a quick check
# while editing; CI runs `make test`.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(XDIST)

# Every benchmark, each in its own process; results to benchmarks/results/ (BENCHMARKS.md).
benchmarks: setup
	$(PY) -m benchmarks.run_all

# Regenerate the lock from .ci/requirements.in in a scratch venv (horovod and lookalike excluded).
lock:
	rm -rf /tmp/lookalike-lock && python3 -m venv /tmp/lookalike-lock
	/tmp/lookalike-lock/bin/pip install -q -r .ci/requirements.in
	/tmp/lookalike-lock/bin/pip freeze --all --exclude-editable | grep -v -i -E "^(horovod|pip|wheel)==" > .ci/requirements.lock

clean:
	rm -rf $(VENV)
