"""Collects the whole suite when run as ``pytest --pyargs polyqueue.conformance``."""

from polyqueue.conformance.suite import *  # noqa: F403
