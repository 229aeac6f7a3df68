"""The public API: every name gnorm_kernels exports resolves to a real object."""

import pytest

import gnorm_kernels as gk


@pytest.mark.parametrize("name", gk.__all__)
def test_export_resolves(name):
    value = getattr(gk, name)
    assert value is not None
    assert name in dir(gk)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'prune_everything'"):
        gk.prune_everything
