.PHONY: check test chaos
check:
	bash scripts/check
test:
	.venv/bin/python -m pytest
# Fault and bad-input probes (tests/chaos), with their figures printed. They also run
# in `make check` (hermetic, about a minute); this runs them alone.
chaos:
	.venv/bin/python -m pytest tests/chaos -m chaos -s
