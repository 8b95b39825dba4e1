"""The whole polyqueue conformance suite, on a Redis Cluster and on one Redis node (URLs from conftest.py)."""

from polyqueue.conformance import *  # noqa: F403 - the suite's test classes are collected from here
