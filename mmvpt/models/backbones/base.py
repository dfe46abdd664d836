"""What the prompted backbones share: a frozen timm model built by name, a prompt method
plugged in, pretrained weights through ``init_cfg``."""
import timm
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmvpt.registry import MODELS


class PromptedBackbone(BaseModule):
    """Base of :class:`PromptedViT` and :class:`PromptedSwin`.

    A subclass names its timm class (``timm_class``), keeps the timm model under its own
    attribute (the checkpoint key prefix) and exposes it as ``timm_model``, its blocks in
    order as ``blocks``, and loads a checkpoint file in ``load_pretrained``.
    """
    timm_class = None

    def create_timm_model(self, arch, **kwargs):
        """``timm.create_model(arch)`` without head, with errors that name the option."""
        name = type(self).__name__
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as err:  # timm's "Unknown model"
            raise ValueError(f'{name} arch={arch!r}: {err}') from None
        except TypeError as err:  # an argument the model does not take
            raise ValueError(f'{name} arch={arch!r}: {err}; {name} needs a timm '
                             f'{self.timm_class.__name__}') from None
        if not isinstance(model, self.timm_class):
            raise ValueError(f'{name} arch={arch!r} is a {type(model).__name__}, not a timm '
                             f'{self.timm_class.__name__}')
        return model

    def check_out_indices(self, out_indices, count, unit):
        """``out_indices`` (an int or a sequence; negative counts from the end) as a sorted
        list of distinct indices below ``count``."""
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        resolved = sorted(i % count for i in indices)
        if resolved != sorted(set(resolved)) or any(not -count <= i < count for i in indices):
            raise ValueError(f'{type(self).__name__} out_indices={out_indices!r}: need distinct '
                             f'{unit} of {count}')
        return resolved

    def build_prompt(self, frozen, prompt, **method_args):
        """Freezes the timm model if asked and builds the prompt method (or None)."""
        if frozen:
            self.timm_model.requires_grad_(False)
        self.prompt = None if prompt is None else MODELS.build(prompt, default_args=method_args)

    def load_pretrained(self, path):
        raise NotImplementedError

    def init_weights(self):
        """Loads ``init_cfg``'s pretrained checkpoint into the timm model (the prompts keep
        their own init), then lets the method read the loaded blocks."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self.load_pretrained(cfg['checkpoint'])
            print_log(f'{type(self).__name__}: loaded {cfg["checkpoint"]}', logger='current')
            self._is_init = True
        elif cfg is not None:
            super().init_weights()
        self.bind_prompt()

    def bind_prompt(self):
        """Lets the method read the backbone's current weights (CVPT's own cross-attention
        copies start from the blocks' attention)."""
        if self.prompt is not None:
            self.prompt.bind_backbone(self.blocks)
