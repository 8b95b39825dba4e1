"""The polyqueue conformance suite: run it against any backend to prove it keeps every promise.

``polyqueue conformance URL`` or ``pytest --pyargs polyqueue.conformance --polyqueue-url URL``;
in your own package: ``from polyqueue.conformance import *`` in a test module and
``--polyqueue-url`` (or override the ``polyqueue_url`` fixture).
"""

from .suite import *  # noqa: F403
from .suite import __all__ as _suite_all

__all__ = list(_suite_all)
