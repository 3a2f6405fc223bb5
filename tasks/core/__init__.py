"""The toolkit's core: no @task here, everything importable and unit-tested. A map, by kind:

- basics, at this level: `profile` (the host profile, every remote path in `RemotePaths`), `database`
  (the profile's `database:` section, pure), `connect` + `hostkeys` (SSH, sudo, host keys), `errors`
  (the one exception family), `ui` (the one console), `edge` (what every task wrapper shares), `parse`,
  `render` (templates), `files` (private and atomic files here), `transfer` (bytes to and from a server),
  `releases`, `defaults`, `studio` (SageMaker Studio, run where the user is).
- `commands/`: every script run on a server, built by pure functions, quoted there and `sh -n`-checked.
- `onserver/`: programs shipped as source and run ON the server (standard library only).
- `provision/`: facts -> pure steps -> one `apply` (`plan`), the TLS steps, the health gate, the
  refusals before any change, adopt's pure part.
- `data/`: snapshots of the server (`snapshots` SQLite, `postgres_snapshots`), `engine` (the one place
  that chooses between them), `replace` + `swap` (new data onto the server, the swap job), `local`
  (this machine's Label Studio data), `catalog` (the snapshots here), `migrate` (migrate-db).

Nothing here imports a task module, and the imports form no cycle (tests/unit/tables/test_imports.py).
"""
