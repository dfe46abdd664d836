"""Mixed precision (``--amp``) on CPU: one bfloat16 training step through
``mmvpt.BF16AmpOptimWrapper`` for every method on a tiny ViT and a tiny Swin, the choice of
wrapper per machine, and ``tools/train.py --amp`` end to end."""
import glob
import math
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from mmvpt.apis import ConfigError, enable_amp
from mmvpt.engine import BF16AmpOptimWrapper
from mmvpt.utils import load_local_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, run_tool
from tests.helpers import tiny_models
from tests.helpers.prompt_dropout import spy_folded_cross_attention
from tests.helpers.tiny_models import BACKBONES, METHODS, prompt_config


class Classifier(nn.Module):
    """Backbone and a linear head (which trains with every method, alone for linear probing)."""

    def __init__(self, backbone, num_classes=4):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dims, num_classes)

    def forward(self, images):
        return self.head(self.backbone(images)[0])


def build(backbone, method):
    torch.manual_seed(0)
    model = Classifier(tiny_models.build(prompt_config(backbone, method), backbone))
    model.backbone.derive_from_frozen()
    if method == 'e2vpt_pruned':  # a pruned token and a pruned segment: both masks multiply
        with torch.no_grad():
            model.backbone.prompt.token_mask[0, 1] = 0
            model.backbone.prompt.segment_mask[1, 0, 2] = 0
    return model.train()


def spy_attention_dtypes(monkeypatch):
    """The dtypes (q, k, v) of every scaled_dot_product_attention call, as the call gets
    them (before autocast casts anything)."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    return calls


def float_dtypes(tensors):
    return {name: t.dtype for name, t in tensors.items() if t.is_floating_point()}


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
@pytest.mark.parametrize('method', sorted(METHODS))
def test_bf16_training_step_on_cpu(monkeypatch, backbone, method):
    model = build(backbone, method)
    folded_calls = spy_folded_cross_attention(monkeypatch)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert tuned and all(n.startswith(('backbone.prompt.', 'head.')) for n in tuned)
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])

    # The same forward in float32 (the prompt dropout draws on float32 prompts either way),
    # with gradients on, so that CVPT takes the path it trains with.
    torch.manual_seed(2)
    float32_loss = F.cross_entropy(model(images), labels).detach()
    folded_calls.clear()

    linear_outputs = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda m, i, out: linear_outputs.append(out.dtype))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9)
    wrapper = BF16AmpOptimWrapper(optimizer=optimizer)
    torch.manual_seed(2)
    attention_dtypes = spy_attention_dtypes(monkeypatch)
    with wrapper.optim_context(model):  # as MMEngine's train_step: forward inside, update after
        loss = F.cross_entropy(model(images), labels)
    wrapper.update_params(loss)

    assert torch.isfinite(loss)
    # Autocast ran the projections in bfloat16, and the result is float32's up to its precision.
    assert linear_outputs and set(linear_outputs) == {torch.bfloat16}
    # Prompt keys/values (float32 parameters) join the tokens' in bfloat16: a float32 join
    # would promote every key and value of the block to float32.
    # timm's own window attention (no SDPA) runs for Swin blocks whose attention gets no extras
    if backbone == 'vit' or method not in ('linear', 'cvpt_plain', 'cvpt_folded', 'adaptformer',
                                           'adapter', 'adapter_plus'):
        assert attention_dtypes and set(attention_dtypes) == {(torch.bfloat16, ) * 3}
    assert abs(loss.item() - float32_loss.item()) <= 0.02 * float32_loss.item()
    if method.startswith('cvpt'):
        assert bool(folded_calls) == (method == 'cvpt_folded')
    # Every tuned tensor moved (but those behind a zero-initialised LoRA B or adapter
    # up-projection, whose first step's gradient, the momentum, is zero); the frozen
    # backbone and every buffer did not.
    state = model.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    behind_zero = {names[id(p)] for p, s in optimizer.state.items()
                   if not s['momentum_buffer'].any()}
    # ... which can only be the first projections of LoRA and of the adapters
    assert behind_zero <= {n for n in tuned if '.lora_a_' in n or '_down_' in n or '.down_' in n}
    assert {n for n, t in state.items() if not torch.equal(t, before[n])} == tuned - behind_zero
    # Parameters, buffers (E2VPT's masks) and the optimizer state (momentum: the first
    # step's gradients) stay float32.
    assert set(float_dtypes(state).values()) == {torch.float32}
    assert {t.dtype for s in optimizer.state.values() for t in s.values()} == {torch.float32}


def test_amp_picks_bfloat16_on_cpu_and_float16_amp_wrapper_on_gpu(monkeypatch):
    def amp_config(gpu, **wrapper):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpu)
        cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1), **wrapper)))
        return enable_amp(cfg).optim_wrapper.to_dict()

    sgd = dict(type='SGD', lr=0.1)
    # CPU: bfloat16 autocast without loss scaling (MMEngine's AmpOptimWrapper needs a GPU).
    assert amp_config(False) == dict(type='mmvpt.BF16AmpOptimWrapper', optimizer=sgd)
    assert amp_config(False, type='AmpOptimWrapper', loss_scale=512.,
                      dtype='bfloat16') == dict(type='mmvpt.BF16AmpOptimWrapper', optimizer=sgd)
    with pytest.raises(ConfigError, match="--amp on CPU runs bfloat16.*dtype='float16'"):
        amp_config(False, dtype='float16')
    # GPU: MMEngine's AmpOptimWrapper, float16 with dynamic loss scaling unless configured.
    assert amp_config(True) == dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=sgd)
    assert amp_config(True, loss_scale=512.)['loss_scale'] == 512.
    with pytest.raises(ConfigError,
                       match="--amp needs optim_wrapper.type OptimWrapper, not 'Other'"):
        amp_config(False, type='Other')


@pytest.mark.tools
def test_train_tool_amp_on_cpu_trains_bfloat16_and_saves_float32(tiny_vtab, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('with a GPU, --amp runs MMEngine\'s float16 AmpOptimWrapper')
    work_dir = str(tmp_path)
    run_tool(
        'train.py', DEMO_CONFIG, '--amp', '--work-dir', work_dir, '--cfg-options',
        *data_options(tiny_vtab), 'train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=2',
        'default_hooks.logger.interval=1', 'model.backbone.frozen=True',
        'model.backbone.prompt.type=mmvpt.E2VPT', 'model.backbone.prompt.num_tokens=4',
        'model.backbone.prompt.num_kv_tokens=2', 'model.backbone.prompt.num_segments=4')
    # bfloat16 was chosen: in the config the run dumped, and in its log.
    dumped = Config.fromfile(osp.join(work_dir, osp.basename(DEMO_CONFIG)))
    assert dumped.optim_wrapper.type == 'mmvpt.BF16AmpOptimWrapper'
    (log_file, ) = glob.glob(osp.join(work_dir, '*', '*.log'))
    with open(log_file) as f:
        log = f.read()
    assert 'mixed precision: bfloat16 autocast, no loss scaling' in log
    losses = [float(v) for v in re.findall(r'\bloss: (\S+)', log)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # 2 epochs of 2 batches

    first, last = (load_local_checkpoint(osp.join(work_dir, f'epoch_{e}.pth')) for e in (1, 2))
    state, previous = last['state_dict'], first['state_dict']
    assert set(float_dtypes(state).values()) == {torch.float32}
    assert {'backbone.prompt.token_mask', 'backbone.prompt.segment_mask'} <= set(state)
    tuned = [k for k in state if k.startswith(('backbone.prompt.', 'head.')) and 'mask' not in k]
    assert len(tuned) == 4  # prompts, key-value prompts, head weight and bias
    assert all(not torch.equal(state[k], previous[k]) for k in tuned)
    assert all(torch.equal(state[k], previous[k]) for k in state if k not in tuned)
    optimizer = last['optimizer']
    assert 'loss_scaler' not in optimizer  # no GradScaler on CPU
    assert ({t.dtype for s in optimizer['state'].values() for t in s.values() if t.dim()}
            == {torch.float32})
