"""The task collection `fab` sees. Task modules hold thin wrappers; the work is in tasks.core."""

from invoke import Collection

from . import provision, service

ns = Collection()
ns.add_task(provision.provision)
for _task in (service.status, service.logs, service.start, service.stop, service.restart):
    ns.add_task(_task)
