"""Entry point for `fab`: the tasks live in the tasks/ package."""

from tasks import ns  # noqa: F401  (Fabric looks for `ns`)
