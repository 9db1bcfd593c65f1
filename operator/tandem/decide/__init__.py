"""The operator's decisions, as pure functions of resources, pools and measurements: which pool, how many
replicas, what a run or a replica costs, whether a gang fits, whether a canary is promoted.

Nothing here reads the cluster or builds a Kubernetes object; `tandem.controller` feeds the inputs in and
`tandem.render` turns the decisions into objects.
"""
