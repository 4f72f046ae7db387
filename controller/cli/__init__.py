"""The `mdc` command: parsing and the verbs."""
