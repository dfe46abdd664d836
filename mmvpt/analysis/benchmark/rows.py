"""The rows of the benchmark's tables (:data:`METHODS`) and the model of each: the backbone
and a 100-class linear head (:class:`Classifier`), built by :func:`build`."""
import timm
import torch
import torch.nn as nn

from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.methods import benchmark_rows, registered_type, takes_prompt_count
from mmvpt.models.prompts import display_name

# The methods' rows, as each method declares them (``benchmark_rows``): {row: (method class,
# what its label adds, options)}. Methods with a prompt count P are measured at each P > 0
# (VARIANTS), the others once (ADAPTER_ROWS).
ROWS = benchmark_rows()
VARIANTS = [row for row, (cls, _, _) in ROWS.items() if takes_prompt_count(cls)]
ADAPTER_ROWS = [row for row in ROWS if row not in VARIANTS]
REFERENCE = 'none'  # the frozen backbone without prompts: the P=0 row every "x P=0" refers to
LINEAR = 'linear'  # linear probing: no backward through the backbone
FULL = 'full'  # full fine-tuning: every weight trains; the row every "x full" refers to
BASELINES = {REFERENCE: 'none (frozen)', LINEAR: display_name(None, frozen=True),
             FULL: display_name(None, frozen=False)}
METHODS = list(BASELINES) + list(VARIANTS) + list(ADAPTER_ROWS)
#: rows measured once, at P = 0
UNPROMPTED = list(BASELINES) + list(ADAPTER_ROWS)
NUM_CLASSES = 100


class Classifier(nn.Module):
    """The backbone's last output through a linear head; ``probe``: the backbone runs
    without a graph (linear probing)."""

    def __init__(self, backbone, num_classes=NUM_CLASSES, probe=False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dims, num_classes)
        self.probe = probe

    def forward(self, img):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.probe):
            features = self.backbone(img)[-1]
        return self.head(features)


def backbone_class(arch):
    return PromptedSwin if arch.startswith('swin_') else PromptedViT


def method_row(arch, method, p):
    """(what the row's label adds, prompt config) of a method's row on ``arch``, at P = ``p``
    for a method with a prompt count."""
    cls = ROWS[method][0]
    backbone = 'swin' if backbone_class(arch) is PromptedSwin else 'vit'
    suffix, options = cls.benchmark_row(method, backbone)
    config = dict(type=registered_type(cls), **options)
    if method in VARIANTS:
        config['num_tokens'] = p
    return suffix, config


def prompt_config(arch, method, p):
    """The prompt config of a row (None for linear probing, full fine-tuning and P=0)."""
    if method in BASELINES:
        return None
    return method_row(arch, method, p)[1]


def method_name(arch, method):
    """A row's name: the method's display name and what the row adds to it."""
    if method in BASELINES:
        return BASELINES[method]
    suffix, config = method_row(arch, method, 1)
    return display_name(config) + suffix


def default_img_size(arch):
    """The input size timm's pretrained config gives ``arch`` (224 if it gives none)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.input_size[-1] if cfg is not None and cfg.input_size else 224


def build(arch, method, p=0, img_size=224, arch_cfg=None, with_cp=False):
    """The Classifier of a row: ``method`` one of METHODS, ``p`` its prompt count."""
    backbone = backbone_class(arch)(arch=arch, img_size=img_size,
                                    prompt=prompt_config(arch, method, p), frozen=method != FULL,
                                    drop_path_rate=0.1, arch_cfg=arch_cfg, with_cp=with_cp)
    model = Classifier(backbone, probe=method == LINEAR)
    if method == REFERENCE:
        # Back-propagate through the frozen blocks as prompt tuning does.
        model.backbone.timm_model.patch_embed.register_forward_hook(
            lambda m, i, out: out.requires_grad_())
    return model.train()



def row_keys(options):
    """(method, P) of each row, in ``options.methods`` order; the P=0 reference first when
    only ``options.prompts`` asks for it (0 in it)."""
    keys = []
    if 0 in options.prompts and REFERENCE not in options.methods:
        keys.append((REFERENCE, 0))
    for method in options.methods:
        if method in UNPROMPTED:
            keys.append((method, 0))
        else:
            keys += [(method, p) for p in options.prompts if p > 0]
    return keys

