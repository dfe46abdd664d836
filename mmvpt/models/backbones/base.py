"""What the prompted backbones share: a frozen timm model built by name, a prompt method
plugged in, pretrained weights through ``init_cfg``, and tuned-only checkpoints loading on
top of them by any route."""
import timm
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmvpt.registry import MODELS
from ..utils.tuned_state import check_checkpoint_fit


class PromptedBackbone(BaseModule):
    """Base of :class:`PromptedViT` and :class:`PromptedSwin`.

    A subclass names its timm class (``timm_class``), keeps the timm model under its own
    attribute (the checkpoint key prefix) and exposes it as ``timm_model``, its blocks in
    order as ``blocks``, and loads a checkpoint file in ``load_pretrained``.
    """
    timm_class = None

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        #: the frozen weights are in place (``init_weights`` ran): a tuned-only checkpoint
        #: may load on top of them
        self.backbone_ready = False
        # torch < 2.2 has only the private names of these hooks
        self._register_state_dict_hook(self._record_pretrained)
        self._register_load_state_dict_pre_hook(self._complete_tuned_only_state, with_module=True)

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
        if self.pretrained_checkpoint is not None:
            self.load_pretrained(cfg['checkpoint'])
            print_log(f'{type(self).__name__}: loaded {cfg["checkpoint"]}', logger='current')
            self._is_init = True
        elif cfg is not None:
            super().init_weights()
        self.bind_prompt()
        self.backbone_ready = True

    @property
    def pretrained_checkpoint(self):
        """The checkpoint file of a ``Pretrained`` ``init_cfg``, else None."""
        cfg = self.init_cfg
        return cfg['checkpoint'] if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained' else None

    @staticmethod
    def _record_pretrained(backbone, state_dict, prefix, local_metadata):
        # The state dict's metadata (saved with it) remembers the backbone it was tuned on,
        # for loaders that drop init_cfg before building (mmseg's init_model).
        if backbone.pretrained_checkpoint is not None:
            local_metadata['pretrained'] = backbone.pretrained_checkpoint

    @staticmethod
    def _complete_tuned_only_state(backbone, state_dict, prefix, local_metadata, *_):
        """Puts the frozen backbone under a checkpoint that carries none of it (mmvpt's
        tuned-only checkpoints), whatever loads it: MMEngine's runner, ``load_checkpoint``,
        mmpretrain's and mmseg's inferencers, ``load_state_dict``.

        A backbone whose weights are not in place yet loads its ``init_cfg`` checkpoint
        first (or, when a loader dropped ``init_cfg``, the one the checkpoint was tuned on, as
        its metadata records); then the frozen tensors are handed to the load with the checkpoint's, so it
        is complete (strict loading passes, nothing is reported missing). Without a
        pretrained checkpoint to load, the frozen part would stay random: that fails, and
        so does a checkpoint whose prompt tensors do not fit.
        """
        local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        frozen = [name for name, p in backbone.named_parameters()
                  if not p.requires_grad and not name.startswith('prompt.')]
        tuned_only = bool(frozen) and not any(name in local for name in frozen)
        if tuned_only or any(k.startswith('prompt.') for k in local):
            # Missing prompts are the loader's to report (a partial load may be meant).
            check_checkpoint_fit(backbone, local, 'the checkpoint', complete=False)
        if not tuned_only:
            if frozen:  # the checkpoint brings the frozen backbone itself
                backbone.backbone_ready = True
            return
        name = type(backbone).__name__
        if not backbone.backbone_ready:
            recorded = local_metadata.get('pretrained')
            if backbone.pretrained_checkpoint is None and recorded is None:
                raise RuntimeError(
                    f'the checkpoint loaded into {name} ({prefix.rstrip(".") or "the model"}) '
                    'holds only tuned tensors, and the backbone has no pretrained checkpoint to '
                    'put under them: set model.backbone.init_cfg=dict(type=\'Pretrained\', '
                    'checkpoint=PATH) in the config')
            if backbone.pretrained_checkpoint is None:  # the config's init_cfg was dropped
                backbone.init_cfg = dict(type='Pretrained', checkpoint=recorded)
            print_log(f'{name}: the checkpoint holds only tuned tensors; loading the pretrained '
                      f'backbone {backbone.pretrained_checkpoint} under them', logger='current')
            backbone.init_weights()
        # The prompts must come from the checkpoint: a missing one stays reported.
        for key, value in backbone.state_dict().items():
            if not key.startswith('prompt.'):
                state_dict.setdefault(prefix + key, value)

    def bind_prompt(self):
        """Lets the method read the backbone's current weights (CVPT's own cross-attention
        copies start from the blocks' attention)."""
        if self.prompt is not None:
            self.prompt.bind_backbone(self.blocks)
