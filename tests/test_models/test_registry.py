import subprocess
import sys

import pytest
import torch.nn as nn
from mmengine.registry import MODELS as ROOT_MODELS

import mmvpt
from mmvpt.registry import ALL_REGISTRIES, MODELS


def test_registries_are_scoped_children_of_mmengine_root():
    for registry in ALL_REGISTRIES:
        assert registry.scope == 'mmvpt'
        assert registry.parent is not None and registry.parent.parent is None
        assert registry.parent._children['mmvpt'] is registry
    assert MODELS.parent is ROOT_MODELS


@pytest.mark.tools
def test_import_mmvpt_does_not_import_host_libraries():
    code = ('import sys, mmvpt; '
            'print(sorted(m for m in ("mmseg", "mmpretrain") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


@MODELS.register_module(name='_RegistryProbe', force=True)
class _RegistryProbe(nn.Linear):

    def __init__(self, width=3):
        super().__init__(width, width)


@pytest.mark.parametrize('host', ['mmpretrain', 'mmseg'])
def test_host_registries_build_scoped_mmvpt_types(host):
    host_models = __import__(f'{host}.registry', fromlist=['MODELS']).MODELS
    module = host_models.build(dict(type='mmvpt._RegistryProbe', width=5))
    assert isinstance(module, _RegistryProbe)
    assert module.weight.shape == (5, 5)


def test_unknown_scoped_type_fails_naming_it():
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    with pytest.raises(KeyError, match='NoSuchBackbone'):
        PRETRAIN_MODELS.build(dict(type='mmvpt.NoSuchBackbone'))


def test_version():
    assert mmvpt.__version__.count('.') == 2
