"""Command-line front end (installed as the import package ``hetclass_standalone``)."""
