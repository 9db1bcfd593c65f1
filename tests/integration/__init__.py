"""Tests against the real local control plane (hack/cluster.sh)."""
