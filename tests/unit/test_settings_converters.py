"""Settings: each flag's text is converted by its field's real type, never guessed from a name."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Optional

import pytest

from featurizer.settings import CONVERTERS, Settings, SettingsError, _converter, parse_settings


def test_every_field_has_the_converter_of_its_annotation():
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        base = next(a for a in (*typing.get_args(hints[f.name]), hints[f.name]) if a in CONVERTERS)
        assert _converter(hints[f.name]) is CONVERTERS[base], f.name


def test_values_arrive_as_their_fields_types(tmp_path):
    settings = parse_settings(["--max-delay-ms", "2.5", "--port", "0"], env={"FEATURIZER_REGISTRY": str(tmp_path)})
    assert settings.max_delay_ms == 2.5 and settings.port == 0 and settings.registry == Path(tmp_path)
    with pytest.raises(SettingsError, match="FEATURIZER_MAX_QUEUE: expected int, got '2.5'"):
        parse_settings([], env={"FEATURIZER_MAX_QUEUE": "2.5"})


def test_a_type_without_a_converter_is_refused():
    with pytest.raises(TypeError, match="no converter"):
        _converter(Optional[list[int]])
