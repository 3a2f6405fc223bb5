"""Ask the installed Label Studio release itself about a database, through its own models (Django's
ORM): run with the release's python, isolated, as the service user, with the service's environment
(DATABASE_NAME may name another SQLite file: a database waiting to be swapped in).

  orm           every migration this release ships is applied, and one row of every model's table
                reads, with every column the release's models name: a missing table or column (a
                schema this release does not expect) fails here, not in a user's request. Prints
                {"tables": N} or {"error": "..."} (exit 1).
  orm-incoming  the same for a database about to be swapped in, except that one which still lacks
                some of the release's migrations (an older one: Label Studio migrates it when it
                starts) is only reported: {"pending": N}, to be checked after the start.
  migrations    the migrations this release knows (its files and those its squashed migrations replace;
                never any database's rows): {app: [names]}

The app server's workers run `read_every_table` too, for a check of the live database that needs no
Django start-up of its own (tasks/core/onserver/app_server.py: DATABASE_CHECK_PATH).
"""

import json
import os
import sys


def set_up_django() -> None:
    import django
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
    django.setup()


def read_every_table(*, incoming: bool = False) -> dict:
    from django.apps import apps
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:  # what `migrate` would apply (a squashed migration as Django sees it)
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # noqa: BLE001
        return {"error": f"django_migrations: {type(exc).__name__}: {exc}".replace("\n", " ")[:400]}
    pending = [(migration.app_label, migration.name) for migration, _ in plan]
    if pending and incoming:
        return {"pending": len(pending)}
    if pending:
        app, name = pending[0]
        return {"error": f"{len(pending)} migration(s) of this release not applied, first {app}.{name}"}
    checked = 0
    for model in apps.get_models(include_auto_created=True):
        meta = model._meta
        if meta.proxy or not meta.managed or meta.swapped:
            continue
        try:
            list(model._base_manager.all()[:1])
        except Exception as exc:  # noqa: BLE001 - whatever the database says is the answer
            why = f"{meta.db_table}: {type(exc).__name__}: {exc}".replace("\n", " ")
            return {"error": why[:400]}
        checked += 1
    return {"tables": checked}


def shipped_migrations() -> dict:
    from django.db.migrations.loader import MigrationLoader

    found: dict = {}
    for (app, name), migration in MigrationLoader(None, ignore_no_migrations=True).disk_migrations.items():
        found.setdefault(app, set()).add(name)
        for replaced_app, replaced in migration.replaces:   # what a squashed migration stands for
            found.setdefault(replaced_app, set()).add(replaced)
    return {app: sorted(names) for app, names in sorted(found.items())}


if __name__ == "__main__":
    set_up_django()
    command = sys.argv[1]
    answer = shipped_migrations() if command == "migrations" else read_every_table(incoming=command == "orm-incoming")
    print(json.dumps(answer))
    sys.exit(1 if "error" in answer else 0)
