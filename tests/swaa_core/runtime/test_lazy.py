"""The packages' lazily imported names are the objects their modules define, every listed name resolves, and an
unknown name fails as on any module."""

from __future__ import annotations

import importlib

import pytest

import swaa_core
import swaa_core.train


@pytest.mark.parametrize("package", [swaa_core, swaa_core.train])
def test_every_lazy_name_is_its_modules_object(package):
    for name, module in package._EXPORTS.items():
        assert getattr(package, name) is getattr(importlib.import_module(module, package.__name__), name)
    assert set(package.__all__) >= set(package._EXPORTS)  # what is exported lazily is also public


@pytest.mark.parametrize("package", [swaa_core, swaa_core.train])
def test_an_unknown_name_raises_attribute_error(package):
    with pytest.raises(AttributeError, match="has no attribute 'not_there'"):
        package.not_there  # noqa: B018 - the access is the test
    assert not hasattr(package, "not_there")
