"""The toolkit's core: no @task here; importable and unit-tested (see DESIGN.md)."""
