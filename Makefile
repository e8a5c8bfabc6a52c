.PHONY: check test
check:
	bash scripts/check
test:
	.venv/bin/python -m pytest
