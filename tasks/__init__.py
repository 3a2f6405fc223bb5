"""The task collection `fab` sees. Task modules hold thin wrappers; the work is in tasks.core."""

from invoke import Collection

from . import data, provision, service, studio

ns = Collection()
for _task in (provision.provision, service.status, service.logs, service.start, service.stop,
              service.restart, data.backup, data.backups, data.prune, data.push_local_db,
              data.pull_server_db, data.restore_local, data.restore_server):
    ns.add_task(_task)
ns.add_collection(studio.ns)
