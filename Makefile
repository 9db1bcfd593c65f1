# Entry points; each is a script under hack/ that prints its progress.
.PHONY: demo test unit lint crds manifests cluster-up cluster-down bench

demo:            ## Build or reuse the local cluster, install Tandem, train and serve the digits example.
	hack/demo.sh

test:            ## Everything CI runs: lint, types, CRD and manifest drift, unit, integration and end-to-end tests.
	hack/test.sh

unit:            ## Fast tests only: no cluster.
	hack/test.sh -m "not cluster and not e2e" tests

lint:
	ruff check operator tests benchmarks && mypy

crds:            ## Regenerate the CRDs from the API models.
	tandem crds

manifests:       ## Regenerate manifests/operator from the Helm chart.
	hack/manifests.sh

cluster-up:
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down
