"""Methods are found, not listed: a method registered with its declarations, and nothing else
edited, appears in every list the project derives (config folders and the report's rows,
generated configs, benchmark rows, tiny test settings, the package's exports)."""
import pytest

from mmvpt.models.methods import benchmark_rows, method_classes, method_folders, tiny_settings
from mmvpt.models.prompts import VPT
from mmvpt.registry import MODELS


class ToyPrompts(VPT):
    """VPT under another name, declaring itself as a new method would."""
    display_name = 'Toy'
    config_folder = 'toy'
    table_order = 15  # between VPT (10) and E2VPT (20)
    benchmark_rows = {'toy': (' (toy)', dict(dropout=0.))}
    tiny_settings = {'toy_tiny': dict(num_tokens=2)}

    @staticmethod
    def name_for(**_):  # VPT's names itself by its options
        return 'Toy'

    @classmethod
    def config_recipe(cls, benchmark, task):
        return dict(prompt=dict(num_tokens=7), note='seven toy prompts.')


@pytest.fixture
def toy_registered():
    MODELS.register_module(module=ToyPrompts)
    yield
    MODELS.module_dict.pop('ToyPrompts')


def test_a_registered_method_is_in_every_derived_list(toy_registered):
    folders = list(method_folders())
    assert folders[:5] == ['full', 'linear', 'vpt', 'toy', 'e2vpt']
    assert method_folders()['toy'] == ('mmvpt.ToyPrompts', True)
    assert ToyPrompts in method_classes()
    assert tiny_settings()['toy_tiny'] == dict(type='mmvpt.ToyPrompts', num_tokens=2)
    assert benchmark_rows()['toy'] == (ToyPrompts, ' (toy)', dict(dropout=0.))
    from tools.misc.generate_configs import all_configs
    configs = all_configs()
    assert configs['toy/vit-b16_vtab-dtd.py'].startswith(
        '# Toy on VTAB-1k dtd (47 classes).\n# seven toy prompts.\n'
        "_base_ = ['../_base_/methods/toy.py', '../_base_/datasets/vtab1k.py']")
    assert 'prompt=dict(num_tokens=7)' in configs['toy/vit-b16_fgvc-cub.py']
    assert 'toy/swin-b_fgvc-cub.py' in configs


def test_the_lists_without_it(toy_registered):
    MODELS.module_dict.pop('ToyPrompts')
    try:
        assert 'toy' not in method_folders() and 'toy_tiny' not in tiny_settings()
    finally:
        MODELS.register_module(module=ToyPrompts)


def test_the_packages_export_every_method():
    import mmvpt.models as models
    for cls in method_classes():
        assert getattr(models, cls.__name__) is cls and cls.__name__ in models.__all__
