"""Plugin discovery failure modes, with real installed distributions (a *.dist-info on sys.path), no mocks.

Each test installs small throwaway packages into a temporary directory that
it puts on ``sys.path``: a module plus ``NAME.dist-info/{METADATA,entry_points.txt}``,
exactly what ``pip install`` leaves behind, so ``importlib.metadata`` finds the
entry points the way it finds a real plugin's.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import polyqueue
from polyqueue.plugins import ENTRY_POINT_GROUP

Install = Callable[..., str]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """``install(entry_point_name, module_source, dist=None) -> module name``: a plugin on sys.path."""
    modules: list[str] = []

    def make(entry_point: str, source: str, dist: str | None = None) -> str:
        module = f"pqtest_plugin_{uuid.uuid4().hex[:10]}"
        dist = dist or module.replace("_", "-")
        root = tmp_path / module
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {module}\n")
        monkeypatch.syspath_prepend(str(root))
        modules.append(module)
        return module

    yield make
    for module in modules:
        sys.modules.pop(module, None)


BACKEND_PLUGIN = """
    import polyqueue
    from polyqueue_memory import MemoryBackend

    class {cls}(MemoryBackend):
        capabilities = MemoryBackend.capabilities

    @polyqueue.hookimpl
    def polyqueue_backends():
        return {{"{scheme}": {cls}}}
"""


def test_a_plugin_that_fails_to_import_is_named_and_breaks_nothing_else(install: Install, tmp_path: Path) -> None:
    module = install("brokendb", "import math\nraise ImportError('needs libbroken 2.0')\n")
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect("brokendb://app:s3cret-pw@db.example/app")
    message = str(info.value)
    assert "'brokendb'" in message and module in message
    assert "ImportError: needs libbroken 2.0" in message
    assert "s3cret-pw" not in message
    with polyqueue.connect(f"sqlite:///{tmp_path / 'ok.db'}") as q:  # other schemes never import it
        q.migrate()
        assert q.enqueue("t") is not None
    assert module not in sys.modules


def test_naming_a_broken_plugin_in_connect_plugins_is_a_configuration_error(install: Install, tmp_path: Path) -> None:
    install("brokenmetrics", "raise RuntimeError('bad config at import')\n")
    with pytest.raises(polyqueue.ConfigurationError, match=r"'brokenmetrics'.*RuntimeError: bad config at import"):
        polyqueue.connect(f"sqlite:///{tmp_path / 'x.db'}", plugins=["brokenmetrics"])


def test_two_installed_plugins_claiming_one_scheme_are_both_named(install: Install) -> None:
    first = install("twindb", BACKEND_PLUGIN.format(cls="First", scheme="twindb"), dist="twin-one")
    second = install("twindb", BACKEND_PLUGIN.format(cls="Second", scheme="twindb"), dist="twin-two")
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect("twindb://")
    message = str(info.value)
    assert "'twindb' is claimed by two plugins" in message
    assert first in message and second in message
    assert "twin-" in message


def test_a_plugin_claiming_a_built_in_scheme_conflicts_instead_of_silently_winning(install: Install) -> None:
    module = install("sneaky", BACKEND_PLUGIN.format(cls="Sneaky", scheme="sqlite"))
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect("sqlite:///:memory:", plugins=["sneaky"])
    assert "polyqueue.builtin" in str(info.value) and module in str(info.value)


def test_an_installed_backend_plugin_is_loaded_lazily_by_its_scheme(install: Install) -> None:
    module = install("lazydb", BACKEND_PLUGIN.format(cls="Lazy", scheme="lazydb"))
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect("nosuchdb://")
    message = str(info.value)
    assert "unknown URL scheme 'nosuchdb'" in message
    assert "lazydb" in message and "memory" in message and "sqlite" in message
    assert f"entry-point group {ENTRY_POINT_GROUP!r}" in message
    assert module not in sys.modules  # listing a scheme does not import its plugin
    q = polyqueue.connect("lazydb://plugins-test")
    try:
        assert type(q.backend).__name__ == "Lazy" and module in sys.modules
        q.migrate()
        q.enqueue("t")
        (job,) = q.claim()
        assert job.job_type == "t"
    finally:
        q.backend.drop_schema()


def test_an_unknown_plugin_name_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(polyqueue.ConfigurationError, match=r"no plugin named 'no-such-plugin'.*'polyqueue'"):
        polyqueue.connect(f"sqlite:///{tmp_path / 'x.db'}", plugins=["no-such-plugin"])


def test_an_unknown_plugin_name_in_the_environment_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYQUEUE_PLUGINS", " , no-such-plugin")
    with pytest.raises(polyqueue.ConfigurationError, match="no-such-plugin"):
        polyqueue.connect(f"sqlite:///{tmp_path / 'x.db'}")


def test_a_misspelt_hook_is_reported_with_the_plugin_name(install: Install, tmp_path: Path) -> None:
    install(
        "typo",
        """
        import polyqueue

        @polyqueue.hookimpl
        def polyqueue_job_enqueud(job_ids):
            pass
        """,
    )
    with pytest.raises(polyqueue.ConfigurationError, match=r"plugin 'typo'.*polyqueue_job_enqueud"):
        polyqueue.connect(f"sqlite:///{tmp_path / 'x.db'}", plugins=["typo"])


def test_a_misspelt_hook_on_a_plugin_object_is_reported(tmp_path: Path) -> None:
    class Metrics:
        @polyqueue.hookimpl
        def polyqueue_job_succeded(self, job: polyqueue.Job) -> None:
            pass

    with pytest.raises(polyqueue.ConfigurationError, match="polyqueue_job_succeded"):
        polyqueue.connect(f"sqlite:///{tmp_path / 'x.db'}", plugins=[Metrics()])


def test_the_backend_guide_covers_every_interface_method_and_capability() -> None:
    from polyqueue.backends.base import CAPABILITIES, Backend

    guide = (Path(__file__).resolve().parent.parent / "docs" / "writing-a-backend.md").read_text(encoding="utf-8")
    methods = [name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")]
    missing = [name for name in methods if f"`{name}(" not in guide]
    missing += [cap for cap in sorted(CAPABILITIES) if f"| `{cap}` |" not in guide]
    assert missing == [], "docs/writing-a-backend.md does not describe these yet"
