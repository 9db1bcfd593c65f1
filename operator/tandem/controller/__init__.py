"""The operator program (image `tandem-operator`): kopf's watches, the work queue, and the reconciles that
read the cluster, ask `tandem.decide` and `tandem.render` what should exist, write it, and record status.

Everything that talks to the API server lives here; the packages it calls are pure.
"""
