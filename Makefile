# The README's two commands are `make demo` and `make test`; the rest are their parts.
.PHONY: help demo test test-fast lint schema e2e bench soak images cluster-up cluster-down bootstrap

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

bootstrap: ## install apt packages and the Python venv (cached in /var/cache/ml-serving)
	ci/bootstrap.sh

demo: bootstrap ## local demo: broker, training, two servers, two tenants, live model promotion
	.venv/bin/python -m mlserving_client.demo

test: ## everything CI runs: fast tests, images, real cluster, end-to-end tests
	ci/test.sh

test-fast: ## lint, unit, integration and chart tests only
	ci/test.sh --fast

lint: bootstrap ## shellcheck, ruff (lint and format check) and mypy, never rewriting a file
	ci/lint.sh

schema: bootstrap ## regenerate the config sections of the chart's values.schema.json from the processes' config models
	.venv/bin/python ci/schema_gen.py

e2e: ## images, real single-node cluster and end-to-end tests only
	ci/test.sh --e2e-only

bench: bootstrap ## benchmark model, transport and server side by side (4-6.5 min; ARGS=--quick for 1.5-2.5 min)
	.venv/bin/python -m mlserving_bench $(ARGS)

soak: bootstrap ## not in CI: 30 min at 50 % of saturation, 2 tenants, a promotion every 5 min, RSS verdict (ARGS=--minutes 5)
	.venv/bin/python -m mlserving_bench.soak $(ARGS)

images: bootstrap ## build the server, trainer and broker images with buildah
	ci/images/build.sh

cluster-up: ## start the real single-node Kubernetes (ci/cluster)
	ci/cluster/cluster.sh up

cluster-down: ## stop it and remove everything it created
	ci/cluster/cluster.sh down
