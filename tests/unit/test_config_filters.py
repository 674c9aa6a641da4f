"""[filter NAME] sections and the `filters` keys: the class imported and made with its
options, every problem reported with the file's line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads

MODULE = """
from proxyd.filters import Filter, OptionError, Options


class Tag(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.value = options.text("value")
        self.limit = options.size("limit", 1024)
        self.pool = options.pool("pool", "web")
        if self.value == "bad":
            raise OptionError("value", "anything but 'bad'", "'bad'")

    def request_head(self, exchange):
        return None


class Broken(Filter):
    def __init__(self, options: Options) -> None:
        raise RuntimeError("cannot start")

    def request_head(self, exchange):
        return None


class NoPhase:
    def __init__(self, options: Options) -> None:
        pass
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "filterlib").mkdir()
    (tmp_path / "filterlib" / "cfgsample_filters.py").write_text(MODULE)
    (tmp_path / "broken_module.py").write_text("raise ImportError('no such thing')\n")
    return tmp_path


def config(filter_keys: str, listener: str = "filters = tag", route: str = "") -> str:
    """[filter tag] starts on line 5, its keys from 6."""
    return (
        textwrap.dedent(
            """\
            [pool web]
            servers = 127.0.0.1:9001
            [pool other]
            servers = 127.0.0.1:9002
            [filter tag]
            """
        )
        + textwrap.dedent(filter_keys)
        + "[route r]\npool = web\n"
        + route
        + "[http h]\nlisten = tcp:8080\nroutes =\n    path / -> route r\n"
        + listener
        + "\n"
    )


def load(config_dir: Path, text: str):  # type: ignore[no-untyped-def]
    path = config_dir / "proxyd.ini"
    path.write_text(text)
    return loads(text, str(path))


def errors(config_dir: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(config_dir, text)
    prefix = str(config_dir / "proxyd.ini")
    return [str(e).removeprefix(prefix) for e in info.value.errors]


GOOD = """\
    class = cfgsample_filters:Tag
    python_path = filterlib
    value = v1
    pool = other
    """


def test_a_filter_is_loaded_with_its_options_and_attached_to_listener_and_route(
    config_dir: Path,
) -> None:
    loaded = load(config_dir, config(GOOD, route="filters = tag\n"))
    [listener] = loaded.http
    [tag] = listener.filters
    assert tag.name == "tag" and tag.cls == "cfgsample_filters:Tag"
    assert tag.instance.value == "v1" and tag.instance.pool == "other"
    assert tag.instance.limit == 1024 and tag.instance.name == "tag"
    assert listener.routes[0].filters == (tag,)


def test_configs_with_the_same_filter_are_equal_though_their_instances_differ(
    config_dir: Path,
) -> None:
    one = load(config_dir, config(GOOD)).http[0]
    two = load(config_dir, config(GOOD)).http[0]
    assert one == two and one.filters[0].instance is not two.filters[0].instance


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "python_path = filterlib\n",
            ":5: [filter tag] class: expected a 'class' key (package.module:Name); found none",
        ),
        (
            "class = cfgsample_filters\n",
            ":6: [filter tag] class: expected package.module:Name; found 'cfgsample_filters'",
        ),
        (
            "class = broken_module:X\n",
            ":6: [filter tag] class: expected an importable module 'broken_module'; "
            "found ImportError: no such thing",
        ),
        (
            "class = cfgsample_filters:Tga\npython_path = filterlib\nvalue = x\n",
            ":6: [filter tag] class: expected a class 'Tga' in cfgsample_filters; found no such"
            " name (did you mean 'Tag'?)",
        ),
        (
            "class = cfgsample_filters:NoPhase\npython_path = filterlib\n",
            ":6: [filter tag] class: expected a filter class (with a method request_head,"
            " request_body, response_head, response_body, log); found"
            " cfgsample_filters:NoPhase has none",
        ),
        (
            "class = cfgsample_filters:Tag\npython_path = filterlib\n",
            ":5: [filter tag] value: expected a 'value' option; found none",
        ),
        (
            "class = cfgsample_filters:Tag\npython_path = filterlib\nvalue = bad\n",
            ":8: [filter tag] value: expected anything but 'bad'; found 'bad'",
        ),
        (
            "class = cfgsample_filters:Tag\npython_path = filterlib\nvalue = v\nlimit = lots\n",
            ":9: [filter tag] limit: expected a size from 0 to 1TiB such as 64KiB or 1MiB;"
            " found 'lots'",
        ),
        (
            "class = cfgsample_filters:Tag\npython_path = filterlib\nvalue = v\npool = nope\n",
            ":9: [filter tag] pool: expected the name of a [pool] ('other', 'web'); found 'nope'",
        ),
        (
            "class = cfgsample_filters:Tag\npython_path = filterlib\nvalue = v\nvalues = w\n",
            ":9: [filter tag] values: expected an option of cfgsample_filters:Tag (limit, pool,"
            " value); found 'values' (did you mean 'value'?)",
        ),
        (
            "class = cfgsample_filters:Broken\npython_path = filterlib\n",
            ":5: [filter tag]: expected cfgsample_filters:Broken made from its options; found"
            " RuntimeError: cannot start",
        ),
        (
            "class = x:Y\npython_path = nowhere\n",
            ":7: [filter tag] python_path: expected a directory; found 'nowhere'",
        ),
    ],
)
def test_filter_section_errors_name_the_line_and_key(
    config_dir: Path, keys: str, expected: str
) -> None:
    assert errors(config_dir, config(keys)) == [expected]


def test_filters_key_refers_to_filter_sections(config_dir: Path) -> None:
    text = config(GOOD, listener="filters = tag tagg tag")
    assert errors(config_dir, text) == [
        ":16: [http h] filters: expected the name of a [filter] ('tag'); found 'tagg'"
        " (did you mean 'tag'?)",
        ":16: [http h] filters: expected each filter once; found 'tag' twice",
    ]
