"""The engine's public header seen from Python, through cffi.

``ffi`` and ``lib`` come from ``preload._engine``, built from
``core/include/shardsock/``.  ``SHARDSOCK_ENGINE_MODULE`` names another build
of the same module (the sanitizer build used by ``make test``) to load
instead.

    >>> from preload.engine import lib, counter_names
    >>> counter_names()[:2]
    ['eth_rx_frames', 'eth_rx_bytes']
"""
import importlib.util
import os


def _load():
    path = os.environ.get("SHARDSOCK_ENGINE_MODULE")
    if path:
        spec = importlib.util.spec_from_file_location("preload._engine", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    from preload import _engine
    return _engine


_mod = _load()
ffi = _mod.ffi
lib = _mod.lib

TCP_STATES = [ffi.string(lib.ss_tcp_state_name(i)).decode() for i in range(lib.SS_TCP_NSTATES)]


def counter_names():
    """Counter names in the order of the header's SS_COUNTERS list."""
    return [ffi.string(lib.ss_counter_name(i)).decode() for i in range(lib.ss_counter_count())]


def counter_descriptions():
    return {ffi.string(lib.ss_counter_name(i)).decode(): ffi.string(lib.ss_counter_desc(i)).decode()
            for i in range(lib.ss_counter_count())}


def read_counters(ptr):
    """A dict of every counter in a ``struct ss_counters *`` (or cdata of it),
    with the per-state gauges under ``tcp_state`` keyed by state name."""
    out = {name: int(getattr(ptr, name)) for name in counter_names()}
    out["tcp_state"] = {TCP_STATES[i]: int(ptr.tcp_state[i]) for i in range(lib.SS_TCP_NSTATES)}
    return out
