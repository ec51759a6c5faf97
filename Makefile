# mailvm: the two entry points of README.md, plus helpers.
#   make run    install everything, then run the main job
#   make test   install everything, start the services tests need, run the test suite
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test bench bench-quick eval clean

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

# detection and false-positive rates on the development corpus -> docs/detection.md
eval: setup
	$(PY) -m bench.detection

clean:
	rm -rf .pytest_cache .hypothesis build dist *.egg-info bench/results
