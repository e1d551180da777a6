"""The launcher machinery starts, restarts and finds servers, and fails loudly when it cannot."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from llama_index.storage.chat_store.core import ChatMessage, message_to_json
from llama_index.storage.chat_store.testing.services import (
    ENTRY_POINT_GROUP,
    ReferencePython,
    ServiceUnavailableError,
    listening,
    provide,
    start_python_server,
)


def test_local_server_restarts_on_the_same_port(tmp_path: Path) -> None:
    server = start_python_server(
        "http.server", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path)
    )
    try:
        port = server.port
        server.stop()
        assert not listening(port)
        server.start()
        assert server.port == port
        assert listening(port)
    finally:
        server.cleanup()
    assert not server.workdir.exists()


def _install_service(pytester: pytest.Pytester, module: str, body: str) -> None:
    """Put a distribution announcing ``module`` as a test service where pytest will find it."""
    pytester.makepyfile(**{module: textwrap.dedent(body)})
    info = pytester.mkdir("fake_backend-1.0.dist-info")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfake = {module}\n")


def test_a_distribution_adds_its_service_through_the_entry_point(
    pytester: pytest.Pytester,
) -> None:
    """A service module named in the entry-point group gives its fixtures to every test."""
    _install_service(
        pytester,
        "fake_backend_testing",
        """
        import pytest

        @pytest.fixture(scope="session")
        def fake_url():
            return "fake://127.0.0.1:1"
        """,
    )
    pytester.makepyfile(
        test_uses_it="def test_it(fake_url):\n    assert fake_url.startswith('fake')\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_a_service_that_cannot_be_imported_stops_the_run(pytester: pytest.Pytester) -> None:
    """A broken service module fails every run naming its distribution, never skips its tests."""
    _install_service(pytester, "fake_backend_testing", "raise ImportError('no emulator here')\n")
    pytester.makepyfile(test_any="def test_it():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test service 'fake' of fake-backend*no emulator here*"])


def test_no_way_to_get_a_server_fails_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_STORE_TEST_NOPE_URL", raising=False)

    def local() -> tuple[str, object]:
        raise ServiceUnavailableError("nope-server is not on PATH")

    failing = provide("Nope", "CHAT_STORE_TEST_NOPE_URL", local, None, "install nope")  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception, match=r"nope-server is not on PATH.*To fix: install"):
        failing.__enter__()


def test_the_first_way_that_works_is_stopped_after_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_STORE_TEST_NOPE_URL", raising=False)
    stopped: list[str] = []

    def no_binary() -> tuple[str, Callable[[], None]]:
        raise ServiceUnavailableError("nope-server is not on PATH")

    def container() -> tuple[str, Callable[[], None]]:
        return "nope://container", lambda: stopped.append("container")

    def a_failing_test() -> None:
        with provide("Nope", "CHAT_STORE_TEST_NOPE_URL", no_binary, container, "") as url:
            assert url == "nope://container"
            assert stopped == []
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        a_failing_test()
    assert stopped == ["container"]


def test_environment_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_STORE_TEST_NOPE_URL", "nope://elsewhere")
    with provide("Nope", "CHAT_STORE_TEST_NOPE_URL", None, None, "") as url:
        assert url == "nope://elsewhere"


def test_llama_index_reference_runs_real_llama_index(
    llama_index_reference: Callable[[Sequence[str]], ReferencePython],
) -> None:
    ours = ChatMessage(role="user", content="héllo", additional_kwargs={"b": b"\x00"})
    reference = llama_index_reference([])
    script = (
        "import sys\n"
        "from llama_index.core.base.llms.types import ChatMessage\n"
        "m = ChatMessage.model_validate_json(sys.argv[1])\n"
        "print(m.model_dump_json())\n"
    )
    line = message_to_json(ours)
    assert reference.run(script, line).strip() == line
