"""shardsock's management layer: the ``shardsock`` command and the Python
view of the engine's public header (through cffi)."""

__version__ = "0.1.0"
