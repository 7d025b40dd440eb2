"""End-to-end tests of the `olmo` command line: its shape, completion, errors and import rules."""
