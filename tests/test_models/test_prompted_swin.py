"""PromptedSwin: equal to timm's Swin without prompts, windowed prompts against a global
re-statement of window attention, pooling, parameter counts on Swin-B shapes, gradients,
checkpoint formats."""
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from mmvpt.models import PromptedSwin
from mmvpt.models.utils import CheckpointMismatchError, window_attention

from tests.helpers.prompt_dropout import (
    PROMPT_DROPOUT,
    dropped,
    masks_per_draw,
    record_prompt_dropout,
    spy_folded_cross_attention,
)
from tests.helpers.tiny_models import SWIN, TINY_SWIN, swin_arch


def timm_swin(**kwargs):
    return timm.create_model(SWIN, num_classes=0, img_size=32, strict_img_size=False,
                             **swin_arch(**kwargs)).eval()


def prompted(prompt=None, reference=None, **kwargs):
    model = PromptedSwin(**{**TINY_SWIN, **kwargs}, prompt=prompt)
    if reference is not None:
        model.swin.load_state_dict(reference.state_dict())
    return model.eval()


# -- a global re-statement of (shifted) window attention ------------------------------------
def window_attention_reference(block, x, extra_k=None, extra_v=None):
    """Every token attends to the tokens of its (shifted) window, with the relative-position
    bias and the shift mask, and to ``extra`` keys ([B,] H, E, d) with neither: one masked
    attention over the whole map, no window partition. ``x``: (B, H, W, C) normalised.

    A map that is not a multiple of the window is, as in Swin, shifted cyclically and then
    padded at the bottom and right with zero tokens, which the windows there attend to."""
    attn = block.attn
    B, H, W, C = x.shape
    heads = attn.num_heads
    ws, shift = block.window_size[0], block.shift_size[0]
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    x = F.pad(torch.roll(x, (-shift, -shift), (1, 2)), (0, 0, 0, Wp - W, 0, Hp - H))
    rows, cols = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing='ij')
    rows, cols = rows.flatten(), cols.flatten()  # coordinates after the shift and padding
    window = (rows // ws) * (Wp // ws) + cols // ws

    def region(c, size):  # the shift mask's regions (only shifted blocks have any)
        return (c >= size - ws).long() + (c >= size - shift).long() if shift else c * 0
    regions = region(rows, Hp) * 3 + region(cols, Wp)
    d_row = (rows % ws)[:, None] - (rows % ws)[None, :]
    d_col = (cols % ws)[:, None] - (cols % ws)[None, :]
    table = attn.relative_position_bias_table[(d_row + ws - 1) * (2 * ws - 1) + d_col + ws - 1]
    bias = table.permute(2, 0, 1)  # (heads, N, N)
    bias = bias + torch.where(regions[:, None] == regions[None, :], 0., -100.)
    bias = bias.masked_fill(window[:, None] != window[None, :], float('-inf'))

    tokens = x.reshape(B, Hp * Wp, C)
    q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // heads) + bias
    if extra_k is not None:
        extra_k, extra_v = (t.expand(B, -1, -1, -1) for t in (extra_k, extra_v))
        logits = torch.cat([q @ extra_k.transpose(-1, -2) / math.sqrt(C // heads), logits], -1)
        v = torch.cat([extra_v, v], dim=2)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Hp * Wp, C)
    out = (out @ attn.proj.weight.T + attn.proj.bias).reshape(B, Hp, Wp, C)[:, :H, :W]
    return torch.roll(out, (shift, shift), (1, 2))


def prompt_kv_reference(block, prompts):
    """Keys and values of prompt tokens ([B,] P, C) through the block's norm1 and W_k, W_v:
    ([B,] H, P, d)."""
    C, heads = prompts.shape[-1], block.attn.num_heads
    _, k, v = (block.norm1(prompts) @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, -1)
    return tuple(t.reshape(*t.shape[:-1], heads, C // heads).transpose(-2, -3) for t in (k, v))


def prompt_outputs_reference(block, h, hp, extra_k=None, extra_v=None):
    """Attention outputs (B, P, C) of normalised prompt tokens ``hp`` (B, P, C) in ``block``:
    in each (shifted, zero-padded) window of the normalised map ``h`` they attend to [extra,
    prompts, window tokens] with no bias or mask; the outputs are averaged over windows."""
    attn, heads = block.attn, block.attn.num_heads
    B, P, C = hp.shape
    out_p = []
    ws, shift = block.window_size[0], block.shift_size[0]
    shifted = torch.roll(h, (-shift, -shift), (1, 2))
    Hp, Wp = (math.ceil(n / ws) * ws for n in shifted.shape[1:3])
    shifted = F.pad(shifted, (0, 0, 0, Wp - shifted.shape[2], 0, Hp - shifted.shape[1]))
    for i in range(0, Hp, ws):
        for j in range(0, Wp, ws):
            tokens = torch.cat([hp, shifted[:, i:i + ws, j:j + ws].reshape(B, -1, C)], 1)
            q, kk, vv = (tokens @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, -1)
            q, kk, vv = (t.reshape(B, -1, heads, C // heads).transpose(1, 2) for t in (q, kk, vv))
            if extra_k is not None:
                kk = torch.cat([extra_k.expand(B, -1, -1, -1), kk], 2)
                vv = torch.cat([extra_v.expand(B, -1, -1, -1), vv], 2)
            a = (q[:, :, :P] @ kk.transpose(-1, -2) / math.sqrt(C // heads)).softmax(-1)
            out_p.append((a @ vv).transpose(1, 2).reshape(B, P, C))
    return torch.stack(out_p).mean(0) @ attn.proj.weight.T + attn.proj.bias


def block_with_prompts_reference(block, x, p, kv=None):
    """One block on image tokens ``x`` (B, H, W, C) and prompt tokens ``p`` (B, P, C) whose
    outputs are kept: image tokens see the prompts (and E²VPT's ``kv``) as unbiased keys,
    prompts attend as :func:`prompt_outputs_reference` says; both get the MLP."""
    h, hp = block.norm1(x), block.norm1(p)
    k, v = prompt_kv_reference(block, p)  # per sample: prompt outputs depend on the image
    if kv is not None:
        k, v = (torch.cat([e.expand(x.shape[0], -1, -1, -1), t], 2) for e, t in zip(kv, (k, v)))
    out_p = prompt_outputs_reference(block, h, hp, *(kv if kv is not None else ()))
    x = x + window_attention_reference(block, h, k, v)
    p = p + out_p
    return x + block.mlp(block.norm2(x)), p + block.mlp(block.norm2(p))


def merge_prompts_reference(merging, p):
    """Patch merging of prompt tokens: each is its own 2 x 2 neighbourhood."""
    return merging.reduction(merging.norm(torch.cat([p, p, p, p], dim=-1)))


def pooled_reference(swin, x, p=None):
    """The final norm, then the mean over [prompts, image tokens] (image tokens only
    without prompts)."""
    x = swin.norm(x)
    if p is None:
        return x.mean(dim=(1, 2))
    return torch.cat([swin.norm(p), x.flatten(1, 2)], dim=1).mean(dim=1)


def forward_reference(swin, img, attended=None, kv=None, pool_prompts=False):
    """Swin with per-block ``attended(layer)`` prompts ([B,] P, C) seen as keys/values only and
    E²VPT ``kv(layer)`` (H, L, d) key-value prompts; the pooled feature, over the last
    block's prompt outputs too if ``pool_prompts``."""
    x = swin.patch_embed(img)
    B, layer, last = x.shape[0], 0, sum(len(stage.blocks) for stage in swin.layers) - 1
    p = None
    for stage in swin.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            if pool_prompts and attended and layer == last:  # its prompts' outputs are pooled
                x, p = block_with_prompts_reference(block, x, attended(layer).expand(B, -1, -1),
                                                    kv(layer) if kv else None)
            else:
                extra = [prompt_kv_reference(block, attended(layer))] if attended else []
                extra += [kv(layer)] if kv else []
                # (B, H, E, d) each, joined along the keys
                keys = (torch.cat([k.expand(B, *k.shape[-3:]) for k, _ in extra], 2)
                        if extra else None)
                values = (torch.cat([v.expand(B, *v.shape[-3:]) for _, v in extra], 2)
                          if extra else None)
                x = x + window_attention_reference(block, block.norm1(x), keys, values)
                x = x + block.mlp(block.norm2(x))
            layer += 1
    return pooled_reference(swin, x, p)


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', [32, 40])  # 40: the map is padded to whole windows
def test_prompts_off_equals_timm(size):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, size, size)
    expected = reference(img)
    for prompt in (None, dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=0)):
        # zero-length E²VPT runs mmvpt's own window path (partition, shift, mask)
        model = prompted(prompt, reference)
        assert (model(img)[0] - expected).abs().max() <= 1e-5


def test_window_attention_equals_global_restatement():
    torch.manual_seed(0)
    swin = timm_swin()
    block = swin.layers[0].blocks[1]  # shifted windows
    assert block.shift_size == (2, 2)
    x = torch.randn(2, 8, 8, 16)
    keys, values = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    seq, grid = x.reshape(2, 64, 16), (8, 8)

    def attend(*args, **kwargs):
        return window_attention(block, seq, grid, *args, **kwargs).reshape(2, 8, 8, 16)
    with torch.no_grad():
        plain = window_attention_reference(block, x)
        assert torch.allclose(attend(), plain, atol=1e-5)
        prompted = window_attention_reference(block, x, keys, values)
        assert not torch.allclose(prompted, plain, atol=1e-3)
        for before, after in (((keys, values), None), (None, (keys, values))):
            assert torch.allclose(attend(before, after), prompted, atol=1e-5)
        # a key mask over [before, window, after] that hides the extra keys hides them all
        hidden = torch.ones(2, 3 + block.window_area, dtype=torch.bool)
        hidden[:, :3] = False
        assert torch.allclose(attend((keys, values), None, hidden), plain, atol=1e-5)
        assert torch.allclose(attend(None, (keys, values), hidden.roll(-3, 1)), plain, atol=1e-5)


@pytest.mark.parametrize('pool_prompts', [True, False])
@pytest.mark.parametrize('size', [32, 40])  # 40: shifted windows on padded maps
@pytest.mark.parametrize('kv_location', ['before', 'after'])
def test_vpt_and_e2vpt_prompts_in_every_window(kv_location, size, pool_prompts):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, size, size)
    vpt = prompted(dict(type='mmvpt.VPT', num_tokens=3), reference, pool_prompts=pool_prompts)
    expected = forward_reference(reference, img, pool_prompts=pool_prompts,
                                 attended=lambda i: vpt.prompt.layer_of(vpt.prompt.prompts, i))
    assert (vpt(img)[0] - expected).abs().max() <= 1e-5

    e2vpt = prompted(dict(type='mmvpt.E2VPT', num_tokens=3, num_kv_tokens=2, num_segments=4,
                          kv_location=kv_location), reference, pool_prompts=pool_prompts)
    m = e2vpt.prompt
    expected = forward_reference(reference, img, attended=lambda i: m.layer_of(m.prompts, i),
                                 kv=lambda i: (m.layer_of(m.kv_prompts, i), ) * 2,
                                 pool_prompts=pool_prompts)
    assert (e2vpt(img)[0] - expected).abs().max() <= 1e-5
    assert not torch.allclose(expected, reference(img), atol=1e-3)  # the prompts matter
    # the pooled prompt outputs matter too
    unpooled = forward_reference(reference, img, attended=lambda i: m.layer_of(m.prompts, i),
                                 kv=lambda i: (m.layer_of(m.kv_prompts, i), ) * 2)
    assert pool_prompts == (not torch.allclose(expected, unpooled, atol=1e-3))


def vpt_shallow_reference(swin, img, prompts, pool_prompts=False):
    """VPT-shallow's ([B,] P, C) ``prompts`` through every block and every patch merging of
    Swin (outputs averaged over windows, see :func:`block_with_prompts_reference`); the
    pooled feature, over the prompts too if ``pool_prompts``."""
    x = swin.patch_embed(img)
    p = prompts.expand(x.shape[0], -1, -1)
    for index, stage in enumerate(swin.layers):
        x = stage.downsample(x)
        if index:
            p = merge_prompts_reference(stage.downsample, p)
        for block in stage.blocks:
            x, p = block_with_prompts_reference(block, x, p)
    return pooled_reference(swin, x, p if pool_prompts else None)


def cvpt_forward_reference(swin, img, prompts, cross_attn=None):
    """Swin with CVPT at insert 3: after a block's window attention every token cross-attends
    to ``prompts(layer)`` ([B,] P, C) over the whole map, with the qkv and proj weights of
    ``cross_attn(layer)`` (default: the block's own window attention)."""
    x, layer = swin.patch_embed(img), 0
    for stage in swin.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            x = x + window_attention_reference(block, block.norm1(x))
            attn = block.attn if cross_attn is None else cross_attn(layer)
            B, H, W, C = x.shape
            tokens, heads = x.reshape(B, -1, C), attn.num_heads
            wq, wk, wv = attn.qkv.weight.chunk(3)
            bq, bk, bv = attn.qkv.bias.chunk(3)
            p = prompts(layer)
            p = p if p.dim() == 3 else p.unsqueeze(0)
            q, k, v = (t.reshape(t.shape[0], -1, heads, C // heads).transpose(1, 2)
                       for t in (tokens @ wq.T + bq, p @ wk.T + bk, p @ wv.T + bv))
            a = (q @ k.transpose(-1, -2) / math.sqrt(C // heads)).softmax(-1)
            ca = (a @ v).transpose(1, 2).reshape(B, -1, C) @ attn.proj.weight.T + attn.proj.bias
            x = x + ca.reshape(B, H, W, C)
            x = x + block.mlp(block.norm2(x))
            layer += 1
    return swin.norm(x).mean(dim=(1, 2))


@pytest.mark.parametrize('pool_prompts', [True, False])
@pytest.mark.parametrize('size', [32, 40])
def test_vpt_shallow_prompts_average_over_windows_and_go_through_merging(size, pool_prompts):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, size, size)
    model = prompted(dict(type='mmvpt.VPT', num_tokens=3, deep=False), reference,
                     pool_prompts=pool_prompts)
    expected = vpt_shallow_reference(reference, img, model.prompt.prompts[0], pool_prompts)
    assert (model(img)[0] - expected).abs().max() <= 1e-5


def test_feature_maps_hold_image_tokens_and_only_the_pooled_feature_prompts():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32)
    for prompt in (dict(type='mmvpt.VPT', num_tokens=5, deep=False),
                   dict(type='mmvpt.E2VPT', num_tokens=5, num_kv_tokens=2, num_segments=4),
                   dict(type='mmvpt.CVPT', num_tokens=5)):
        model = prompted(prompt, out_type='featmap', out_indices=(0, 1))
        maps = model(img)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 32, 4, 4)]  # image grid only
        model.out_type, model.out_indices = 'avg_featmap', [1]
        pooled = model(img)[0]
        model.pool_prompts = False
        assert torch.allclose(model(img)[0], maps[1].mean(dim=(2, 3)), atol=1e-6)
        # CVPT has no prompt tokens in the sequence: nothing else to pool
        assert torch.allclose(pooled, maps[1].mean(dim=(2, 3)), atol=1e-6) == (
            prompt['type'] == 'mmvpt.CVPT')


def test_cvpt_cross_attends_over_the_whole_map_with_shared_weights():
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    model = prompted(dict(type='mmvpt.CVPT', num_tokens=3, insert=3), reference)
    m = model.prompt
    expected = cvpt_forward_reference(reference, img, lambda layer: m.layer_of(m.prompts, layer))
    assert torch.allclose(model(img)[0], expected, atol=1e-5)
    # a learnable copy starts as the shared weights
    learnable = prompted(dict(type='mmvpt.CVPT', num_tokens=3, insert=3, ca_trainable=True),
                         reference)
    learnable.prompt.prompts = model.prompt.prompts
    learnable.derive_from_frozen()
    assert torch.allclose(learnable(img)[0], expected, atol=1e-5)


def test_ivpt_connects_within_stages_only_and_switches_ar_off():
    model = prompted(dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=4))
    m = model.prompt
    assert m.ar_prompts is None and m.num_ar_tokens == 0
    assert m.aggregation.shape == (2, 3, 3)  # one Γ inside each 2-block stage, none across
    with torch.no_grad():
        m.aggregation[1].copy_(2 * torch.eye(3))
    ctx = m.start(2)
    stage1 = m.prompts[1]
    # one task: a task axis of 1
    assert torch.allclose(ctx.at('prompts', 3), (stage1[1] + 2 * stage1[0])[None])
    # the stage's first block: no connection
    assert torch.equal(ctx.at('prompts', 2), stage1[0][None])


SWIN_METHODS = {
    'vpt_deep': dict(type='mmvpt.VPT', num_tokens=3),
    'vpt_shallow': dict(type='mmvpt.VPT', num_tokens=3, deep=False),
    'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=3, num_kv_tokens=2, num_segments=4),
    'cvpt': dict(type='mmvpt.CVPT', num_tokens=3),
    'cvpt_trainable_ca': dict(type='mmvpt.CVPT', num_tokens=3, ca_trainable=True),
    'ivpt': dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=0),
}
# every tensor of the method, one per stage where widths differ (2 stages here)
SWIN_TUNED = {
    'vpt_deep': {'prompt.prompts.0', 'prompt.prompts.1'},
    'vpt_shallow': {'prompt.prompts'},
    'e2vpt': {'prompt.prompts.0', 'prompt.prompts.1', 'prompt.kv_prompts.0', 'prompt.kv_prompts.1'},
    'cvpt': {'prompt.prompts.0', 'prompt.prompts.1'},
    'cvpt_trainable_ca': {'prompt.prompts.0', 'prompt.prompts.1'} | {
        f'prompt.cross_attn.{layer}.{name}' for layer in range(4)
        for name in ('qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias')},
    'ivpt': {'prompt.prompts.0', 'prompt.prompts.1', 'prompt.aggregation'},
}


def assert_every_tuned_tensor_has_gradient(model, method):
    """Exactly the method's tensors get gradients (none missing, e.g. detached; none of the
    frozen backbone), and none of them is all zeros."""
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == SWIN_TUNED[method]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == SWIN_TUNED[method]
    for name in with_grad:
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize('method', sorted(SWIN_METHODS))
def test_every_prompt_tensor_gets_a_gradient(method):
    torch.manual_seed(0)
    model = prompted(SWIN_METHODS[method], drop_path_rate=0.1)
    model.derive_from_frozen()
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].pow(2).sum().backward()
    assert_every_tuned_tensor_has_gradient(model, method)


def test_swin_b_parameter_counts():
    """Swin-B: depths (2, 2, 18, 2), widths 128..1024, sum of block widths 12,032. Pooling
    prompts and merging VPT-shallow's set use the backbone's own weights: no parameters."""
    def count(prompt):
        counts = set()
        for pool_prompts in (True, False):
            with torch.device('meta'):  # shapes only
                model = PromptedSwin(arch='swin_base_patch4_window7_224', prompt=prompt,
                                     pool_prompts=pool_prompts)
            counts.add(sum(p.numel() for p in model.parameters() if p.requires_grad))
        assert len(counts) == 1
        return counts.pop()
    assert count(None) == 0
    assert count(dict(type='mmvpt.VPT', num_tokens=10)) == 120_320
    assert count(dict(type='mmvpt.VPT', num_tokens=10, deep=False)) == 1_280
    assert count(dict(type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5)) == 120_320 + 60_160
    assert count(dict(type='mmvpt.CVPT', num_tokens=10)) == 120_320
    assert count(dict(type='mmvpt.IVPT', num_tokens=10, num_ar_tokens=0)) == 120_320 + 20 * 100


def test_e2vpt_prunes_the_first_stage_only():
    model = prompted(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=0, num_segments=4))
    assert model.prompt.prunable_layers == slice(0, 2)


def official_layout(state):
    """timm Swin keys -> the official (Microsoft) checkpoint: patch merging at the end of the
    previous stage, buffers saved, under 'model', with a 21k head."""
    out = {re.sub(r'layers\.(\d+)\.downsample',
                  lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k): v
           for k, v in state.items()}
    out['layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(16, 16, dtype=torch.long)
    out['layers.0.blocks.1.attn_mask'] = torch.zeros(4, 16, 16)
    out['head.weight'], out['head.bias'] = torch.zeros(21841, 32), torch.zeros(21841)
    return {'model': out}


def test_checkpoints_load_and_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    official = tmp_path / 'swin_official.pth'
    torch.save(official_layout(reference.state_dict()), official)
    timm_file = tmp_path / 'swin_timm.pth'
    torch.save(reference.state_dict(), timm_file)
    for path in (official, timm_file):
        model = PromptedSwin(**TINY_SWIN, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        model.init_weights()
        assert (model.eval()(img)[0] - reference(img)).abs().max() <= 1e-5
    wider = tmp_path / 'wider.pth'
    torch.save(timm_swin(embed_dim=24).state_dict(), wider)
    model = PromptedSwin(**TINY_SWIN, init_cfg=dict(type='Pretrained', checkpoint=str(wider)))
    with pytest.raises(CheckpointMismatchError,
                       match=r'layers.0.blocks.0.attn.qkv.weight: checkpoint '
                             r'\(72, 24\) vs model \(48, 16\)'):
        model.init_weights()
    state = reference.state_dict()
    del state['norm.weight']
    torch.save(state, tmp_path / 'headless.pth')
    model = PromptedSwin(**TINY_SWIN, init_cfg=dict(type='Pretrained',
                                                    checkpoint=str(tmp_path / 'headless.pth')))
    with pytest.raises(CheckpointMismatchError, match='missing keys: norm.weight'):
        model.init_weights()
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        missing = dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth'))
        PromptedSwin(**TINY_SWIN, init_cfg=missing).init_weights()


def test_bad_options_are_named():
    with pytest.raises(ValueError,
                       match="arch='vit_base_patch16_224'.*needs a timm SwinTransformer"):
        PromptedSwin(arch='vit_base_patch16_224', arch_cfg=dict(depth=1))
    with pytest.raises(ValueError, match="arch='swin_nano': Unknown model"):
        PromptedSwin(arch='swin_nano')
    with pytest.raises(ValueError, match='need distinct stages of 2'):
        prompted(out_indices=(0, 2))
    with pytest.raises(ValueError, match='num_segments=5: must divide the token widths 16, 32'):
        prompted(dict(type='mmvpt.E2VPT', num_tokens=2, num_segments=5))
    with pytest.raises(ValueError, match='projection needs one token width'):
        prompted(dict(type='mmvpt.VPT', num_tokens=2, proj_dim=8))


def test_cvpt_trainable_cross_attention_copy_is_used_and_trains():
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    model = prompted(dict(type='mmvpt.CVPT', num_tokens=3, ca_trainable=True), reference)
    m = model.prompt

    def prompts(layer):
        return m.layer_of(m.prompts, layer)
    model.derive_from_frozen()  # the copies start equal to the blocks' projections...
    with torch.no_grad():  # ...so move them away: the forward must follow the copies
        for p in m.cross_attn.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        with_copies = cvpt_forward_reference(reference, img, prompts,
                                             lambda layer: m.cross_attn[layer])
        with_block_attention = cvpt_forward_reference(reference, img, prompts)
        assert (model(img)[0] - with_copies).abs().max() <= 1e-5
    assert (with_copies - with_block_attention).abs().max() > 1e-2

    # one optimizer step moves every tensor of every copy; the backbone stays as it was
    model.train()
    copies = {n: p.detach().clone() for n, p in m.cross_attn.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(img)[0].pow(2).sum().backward()
    optimizer.step()
    assert len(copies) == 4 * 4  # qkv and proj, weight and bias, per block
    for name, p in m.cross_attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert (p - copies[name]).abs().max() > 0, name
    for name, value in reference.state_dict().items():
        assert torch.equal(model.swin.state_dict()[name], value), name


def swin_reference(method, model, reference, img, seen=lambda layer, prompts: prompts):
    """The reference forward of ``method`` with ``model``'s prompts on the timm Swin
    ``reference``; ``seen(layer, prompts)``: what the layer's prompts become after dropout."""
    m = model.prompt
    at = m.layer_of
    pool = model.pool_prompts
    if method == 'vpt_deep':
        return forward_reference(reference, img, attended=lambda i: seen(i, at(m.prompts, i)),
                                 pool_prompts=pool)
    if method == 'vpt_shallow':
        return vpt_shallow_reference(reference, img, seen(0, m.prompts[0]), pool)
    if method == 'e2vpt':
        return forward_reference(reference, img, attended=lambda i: seen(i, at(m.prompts, i)),
                                 kv=lambda i: (at(m.kv_prompts, i), ) * 2, pool_prompts=pool)
    if method.startswith('cvpt'):
        own = None if m.cross_attn is None else lambda i: m.cross_attn[i]
        return cvpt_forward_reference(reference, img, lambda i: seen(i, at(m.prompts, i)), own)
    # iVPT: P̂ = P^l + Γ P^(l-1) inside a stage (Γ counted over the stages' connections)
    mixed, connection = [], 0
    for stage in m.prompts:
        for j in range(stage.shape[0]):
            if j == 0:
                mixed.append(stage[0])
            else:
                mixed.append(stage[j] + m.aggregation[connection] @ stage[j - 1])
                connection += 1
    return forward_reference(reference, img, attended=lambda i: seen(i, mixed[i]),
                             pool_prompts=pool)


@pytest.mark.parametrize('method', sorted(SWIN_METHODS))
def test_every_method_at_a_size_not_a_multiple_of_the_window(method):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 40, 40)  # 10 x 10 tokens, then 5 x 5: windows of 4 need padding
    model = prompted(SWIN_METHODS[method], reference)
    model.derive_from_frozen()
    m = model.prompt
    with torch.no_grad():
        if method == 'ivpt':  # away from the identity init, so Γ matters
            m.aggregation.add_(torch.randn_like(m.aggregation) * 0.3)
        if getattr(m, 'cross_attn', None) is not None:  # a copy no longer equal to the block's
            for p in m.cross_attn.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        expected = swin_reference(method, model, reference, img)
        assert (expected - reference(img)).abs().max() > 1e-4  # the prompts matter
    (out, ) = model(img)
    assert out.shape == (2, 32)
    assert (out - expected).abs().max() <= 1e-5
    out.pow(2).sum().backward()
    assert_every_tuned_tensor_has_gradient(model, method)
    model.out_type, model.out_indices = 'featmap', [0, 1]
    with torch.no_grad():
        assert [tuple(f.shape) for f in model(img)] == [(2, 16, 10, 10), (2, 32, 5, 5)]


@pytest.mark.parametrize('prune_mode', ['remove', 'mask'])
def test_e2vpt_pruning_masks_apply_on_the_first_stage(prune_mode):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    model = prompted(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
                          prune_mode=prune_mode), reference)
    m = model.prompt
    # what the pruning hook sets: masks of the first stage (layers 0, 1) only
    token_mask = torch.ones(4, 4)
    token_mask[0] = torch.tensor([1., 0, 1, 1])
    token_mask[1] = torch.tensor([0., 1, 1, 0])
    segment_mask = torch.ones(4, 4, 4)
    segment_mask[0, 2, 1] = segment_mask[1, 1, 3] = 0
    with torch.no_grad():
        unpruned = model(img)[0]
        m.token_mask.copy_(token_mask)
        m.segment_mask.copy_(segment_mask)
        pruned = model(img)[0]

    def pruned_prompts(mode):
        def at(layer):
            prompts = m.layer_of(m.prompts, layer)
            width = prompts.shape[-1] // 4  # 4 contiguous segments per prompt
            dims = torch.ones_like(prompts)
            for t in range(4):
                for r in range(4):
                    if segment_mask[layer, t, r] == 0:
                        dims[t, r * width:(r + 1) * width] = 0
            prompts = prompts * dims * token_mask[layer, :, None]
            # 'remove': pruned tokens leave; 'mask': they stay as zeros, and still attend
            return prompts[token_mask[layer].bool()] if mode == 'remove' else prompts
        return at

    def kv(layer):
        return (m.layer_of(m.kv_prompts, layer), ) * 2
    with torch.no_grad():
        expected = forward_reference(reference, img, attended=pruned_prompts(prune_mode), kv=kv,
                                     pool_prompts=True)
        other_mode = forward_reference(
            reference, img, kv=kv, pool_prompts=True,
            attended=pruned_prompts('mask' if prune_mode == 'remove' else 'remove'))
    assert (pruned - expected).abs().max() <= 1e-5
    assert (expected - unpruned).abs().max() > 1e-4
    assert (expected - other_mode).abs().max() > 1e-4


@pytest.mark.parametrize('method', ['vpt_deep', 'vpt_shallow', 'e2vpt', 'cvpt', 'ivpt'])
def test_train_mode_per_sample_prompt_dropout_equals_reference(monkeypatch, method):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 40, 40)
    model = prompted({**SWIN_METHODS[method], 'dropout': PROMPT_DROPOUT, 'dropout_mode': 'sample'},
                     reference)
    if method == 'ivpt':
        with torch.no_grad():
            model.prompt.aggregation.add_(torch.randn_like(model.prompt.aggregation) * 0.3)
    folded_calls = spy_folded_cross_attention(monkeypatch)
    masks = record_prompt_dropout(monkeypatch)
    model.train()
    torch.manual_seed(1)
    (out, ) = model(img)
    assert len(masks) == (1 if method == 'vpt_shallow' else 4)
    # 3 prompts x 2 or 4 heads: CVPT takes the folded cross-attention with per-sample prompts
    assert len(folded_calls) == (4 if method == 'cvpt' else 0)
    assert all(masks_per_draw(mask).shape[0] == 2 and (mask[0] != mask[1]).any() for mask in masks)
    with torch.no_grad():
        expected = swin_reference(method, model, reference, img, lambda i, p: dropped(p, masks[i]))
        batch_shared = swin_reference(method, model, reference, img,
                                      lambda i, p: dropped(p, masks[i][0]))
    assert (out.detach() - expected).abs().max() <= 1e-5
    assert (batch_shared - expected).abs().max() > 1e-4
