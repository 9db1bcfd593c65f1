"""Pure builders: desired child objects from a resource, its pool and the operator's configuration.

Names are deterministic and every child carries a controller owner reference, so a restarted operator finds
what it made instead of making it twice, and deleting a resource lets the garbage collector remove the rest.
"""
