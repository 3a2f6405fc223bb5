"""What the integration tests share besides fixtures (those are in tests/integration/conftest.py):
`fab` run as a user runs it, provisioned VMs and their clones, Label Studio read through its official SDK,
and a preload library for the tests of what root runs."""
