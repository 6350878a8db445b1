"""One module per dataset file format; :mod:`mmpt.data.readers` is the public entry point."""
