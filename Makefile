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

test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) -m benchmarks.run_all

# Regenerate the lock from .ci/requirements.in in a scratch venv (horovod and lookalike excluded).
lock:
	rm -rf /tmp/lookalike-lock && python3 -m venv /tmp/lookalike-lock
	/tmp/lookalike-lock/bin/pip install -q -r .ci/requirements.in
	/tmp/lookalike-lock/bin/pip freeze --all --exclude-editable | grep -v -i -E "^(horovod|pip|wheel)==" > .ci/requirements.lock

clean:
	rm -rf $(VENV)
