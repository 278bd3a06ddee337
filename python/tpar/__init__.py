"""tpar: run synchronous Python functions in a cache of worker processes
from Trio, with the API of trio-parallel (``import tpar as trio_parallel``).
The workers are ``tpar-worker`` processes driven by a C core."""

from ._impl import (
    BrokenWorkerError,
    WorkerContext,
    WorkerContextStatistics,
    WorkerType,
    atexit_shutdown_grace_period,
    cache_scope,
    configure_default_context,
    current_default_worker_limiter,
    default_context_statistics,
    open_worker_context,
    run_sync,
)
from ._remote import RemoteContext, open_remote_context
from ._map import map

from ._core import VERSION as __version__  # meson.build's project version

__all__ = [
    "BrokenWorkerError",
    "WorkerContext",
    "WorkerContextStatistics",
    "WorkerType",
    "atexit_shutdown_grace_period",
    "cache_scope",
    "configure_default_context",
    "current_default_worker_limiter",
    "default_context_statistics",
    "open_worker_context",
    "run_sync",
    "RemoteContext",
    "open_remote_context",
]

# Public objects say they are tpar's (reprs, docs, pickles by reference),
# wherever in the package they are defined.
for _name in __all__:
    try:
        globals()[_name].__module__ = __name__
    except (AttributeError, TypeError):  # pragma: no cover
        pass
del _name
# tpar.map is public but not in __all__: `from tpar import *` must not
# hide the builtin map.
map.__module__ = __name__
