# Shortcuts for those who have make; ./dev works without it.
.PHONY: run test bench clean
run:
	./dev run
test:
	./dev test
bench:
	./dev bench
clean:
	rm -rf .venv _trial_temp* build *.egg-info .mypy_cache .ruff_cache .hypothesis
