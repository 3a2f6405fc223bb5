"""The task collection `fab` sees. Task modules hold thin wrappers; the work is in tasks.core."""

from invoke import Collection

from . import service

ns = Collection()
ns.add_task(service.status)
