.PHONY: check test chaos lock latest
PY ?= .venv/bin/python
check:
	bash scripts/check
test:
	$(PY) -m pytest
# Fault and bad-input probes (tests/chaos), with their figures printed. They also run
# in `make check` (hermetic, about a minute); this runs them alone.
chaos:
	$(PY) -m pytest tests/chaos -m chaos -s
# Re-resolve the locks from pyproject.toml's ranges (needs PyPI). Without UPGRADE the
# versions already locked are kept where they still fit; `make lock UPGRADE=1` takes
# the newest the ranges allow. Commit both files with the change that needed them.
lock:
	bash scripts/lock $(if $(UPGRADE),--upgrade)
# The early warning: a throwaway venv with the newest versions the ranges allow, the
# whole check run in it, and which distributions differ from the lock.
latest:
	bash scripts/latest
