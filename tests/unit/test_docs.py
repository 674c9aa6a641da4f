"""docs/configuration.md documents every key the loader accepts, and every template variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.config.load import SCHEMAS
from proxyd.config.routes import TEMPLATE_VARIABLES

REFERENCE = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize(
    ("kind", "key"), [(kind, key) for kind, (_, _, keys) in SCHEMAS.items() for key in keys]
)
def test_every_key_is_in_the_configuration_reference(kind: str, key: str) -> None:
    assert f"`{key}`" in REFERENCE, f"[{kind}] {key} is not documented in docs/configuration.md"


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_every_section_kind_has_a_heading(kind: str) -> None:
    assert f"## `[{kind}" in REFERENCE


@pytest.mark.parametrize("name", TEMPLATE_VARIABLES)
def test_every_template_variable_is_documented(name: str) -> None:
    assert f"`{{{name}}}`" in REFERENCE
