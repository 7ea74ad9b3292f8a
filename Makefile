# README command 1: make demo.  README command 2: make test.  Both set themselves up.
PYTHON ?= python3
PYTEST = $(PYTHON) -m pytest

.PHONY: setup test test-unit test-jvm demo bench clean

setup:
	@PYTHON=$(PYTHON) bash tools/setup.sh

# JVM tests run in their own pytest process (one JVM per process, one session fixture).
test: setup
	$(PYTEST) -q -m "not jvm" tests
	$(PYTEST) -q -m "jvm" tests

# The sample nuclei shipped in the package (python/ijtorch/samples), so it runs from a clone alone;
# `make demo DATA=../shared/data` segments held-out images of the shared data instead.
demo: setup
	$(PYTHON) -m ijtorch.cli demo --output demo_output $(if $(DATA),--data "$(DATA)")

bench: setup
	for b in benchmarks/bench_*.py; do $(PYTHON) $$b || exit 1; done

clean:
	rm -rf build dist demo_output .pytest_cache .ijtorch-setup-stamp
