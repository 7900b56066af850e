"""One module per pipeline; each holds one @flow that only wires tasks.

Prefect loads a deployment's entrypoint as a script and puts this folder on sys.path, so a
module here must not share a name with a top-level package (hence sp_nas.py, not spnas.py,
which would shadow the `spnas` package)."""
