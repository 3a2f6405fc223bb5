"""The task collection `fab` sees: every task of the host modules at the top level (`fab -H vm
provision`), the SageMaker Studio tasks under `studio.`. Task modules hold thin wrappers; the work is
in tasks.core."""

from invoke import Collection

from . import adopt, data, export, media, migrate, offsite, provision, service, site, studio, upgrade

ns = Collection()
for _module in (provision, adopt, upgrade, service, data, export, migrate, media, offsite, site):
    for _task in Collection.from_module(_module).tasks.values():
        ns.add_task(_task)
ns.add_collection(Collection.from_module(studio, name="studio"))
