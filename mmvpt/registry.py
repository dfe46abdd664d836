"""mmvpt's registries, children of MMEngine's root registries.

Every class here is registered under the ``mmvpt`` scope, so a config keeps the
``default_scope`` of its host library (``mmpretrain`` or ``mmseg``) and names our
classes as ``type='mmvpt.PromptedViT'``. MMEngine finds the scope through the root
registry; ``locations`` lets it import the defining modules on first use, so a config
only needs ``custom_imports=dict(imports=['mmvpt'])``.

This module imports MMEngine only (never mmpretrain or mmseg).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmvpt', locations=['mmvpt.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmvpt', locations=['mmvpt.engine'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope='mmvpt', locations=['mmvpt.datasets'])
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, scope='mmvpt', locations=['mmvpt.datasets'])
OPTIM_WRAPPERS = Registry(
    'optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='mmvpt', locations=['mmvpt.engine'])

ALL_REGISTRIES = (MODELS, HOOKS, DATASETS, TRANSFORMS, OPTIM_WRAPPERS)
