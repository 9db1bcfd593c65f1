"""Helpers shared by tests: the local control plane handle and polling utilities."""
