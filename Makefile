.PHONY: serve test lint bench install
serve:
	bash scripts/serve
test:
	bash scripts/test
lint:
	bash scripts/lint
bench:
	bash scripts/bench
install:
	bash scripts/install
