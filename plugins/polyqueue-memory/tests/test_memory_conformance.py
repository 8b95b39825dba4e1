"""The whole polyqueue conformance suite, run on ``memory://`` (the URL comes from conftest.py)."""

from polyqueue.conformance import *  # noqa: F403 - the suite's test classes are collected from here
