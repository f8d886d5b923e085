"""Loaded at start-up by every Python process whose PYTHONPATH holds this folder: the tests put
it there for the processes of their 127.0.0.1-only Ray cluster (its host, a sweep's driver, a
`dvc repro` whose stages join it). Ray's `ray.init` turns a 127.0.0.1 address into this
machine's network address, where such a cluster does not listen; this keeps it as given.
Nothing else changes: the commands are the project's own."""
try:
    import ray._private.services as _services
except ImportError:  # a process of the test environment without Ray
    pass
else:
    _services.resolve_ip_for_localhost = lambda host: host
