"""Developer tools, not part of the product: the test VM (image, machine, `make demo`) and a small
Label Studio HTTP client. Used by tests/integration and bench/; tasks/ never imports from here."""
