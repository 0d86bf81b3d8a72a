# `make demo` runs the main job end to end; `make test` runs the tests. Both set up .venv first.
VENV := .venv
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test test-fast clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf data runs .pytest_cache
