"""PromptedSwin: equal to timm's Swin without prompts, windowed prompts against a global
re-statement of window attention, pooling, parameter counts on Swin-B shapes, gradients,
checkpoint formats."""
import math
import re

import pytest
import timm
import torch

from mmvpt.models import PromptedSwin
from mmvpt.models.utils import CheckpointMismatchError, window_attention

ARCH = 'swin_tiny_patch4_window7_224'
CFG = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
TINY = dict(arch=ARCH, img_size=32, arch_cfg=CFG)


def timm_swin(**kwargs):
    return timm.create_model(ARCH, num_classes=0, img_size=32, strict_img_size=False,
                             **{**CFG, **kwargs}).eval()


def prompted(prompt=None, reference=None, **kwargs):
    model = PromptedSwin(**{**TINY, **kwargs}, prompt=prompt)
    if reference is not None:
        model.swin.load_state_dict(reference.state_dict())
    return model.eval()


# -- a global re-statement of (shifted) window attention ------------------------------------
def window_attention_reference(block, x, extra_k=None, extra_v=None):
    """Every token attends to the tokens of its (shifted) window, with the relative-position
    bias and the shift mask, and to ``extra`` keys ([B,] H, E, d) with neither: one masked
    attention over the whole map, no window partition. ``x``: (B, H, W, C) normalised."""
    attn = block.attn
    B, H, W, C = x.shape
    heads = attn.num_heads
    ws, shift = block.window_size[0], block.shift_size[0]
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    rows, cols = (rows - shift) % H, (cols - shift) % W  # coordinates after the cyclic shift
    rows, cols = rows.flatten(), cols.flatten()
    window = (rows // ws) * (W // ws) + cols // ws

    def region(c, size):  # the shift mask's regions (only shifted blocks have any)
        return (c >= size - ws).long() + (c >= size - shift).long() if shift else c * 0
    regions = region(rows, H) * 3 + region(cols, W)
    d_row = (rows % ws)[:, None] - (rows % ws)[None, :]
    d_col = (cols % ws)[:, None] - (cols % ws)[None, :]
    table = attn.relative_position_bias_table[(d_row + ws - 1) * (2 * ws - 1) + d_col + ws - 1]
    bias = table.permute(2, 0, 1)  # (heads, N, N)
    bias = bias + torch.where(regions[:, None] == regions[None, :], 0., -100.)
    bias = bias.masked_fill(window[:, None] != window[None, :], float('-inf'))

    tokens = x.reshape(B, H * W, C)
    q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // heads) + bias
    if extra_k is not None:
        extra_k, extra_v = (t.expand(B, -1, -1, -1) for t in (extra_k, extra_v))
        logits = torch.cat([q @ extra_k.transpose(-1, -2) / math.sqrt(C // heads), logits], -1)
        v = torch.cat([extra_v, v], dim=2)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H * W, C)
    return (out @ attn.proj.weight.T + attn.proj.bias).reshape(B, H, W, C)


def prompt_kv_reference(block, prompts):
    """Keys and values of prompt tokens ([B,] P, C) through the block's norm1 and W_k, W_v:
    ([B,] H, P, d)."""
    C, heads = prompts.shape[-1], block.attn.num_heads
    _, k, v = (block.norm1(prompts) @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, -1)
    return tuple(t.reshape(*t.shape[:-1], heads, C // heads).transpose(-2, -3) for t in (k, v))


def forward_reference(swin, img, attended=None, kv=None):
    """Swin with per-block ``attended(layer)`` prompts (P, C) seen as keys/values only and
    E²VPT ``kv(layer)`` (H, L, d) key-value prompts; the mean of the final tokens."""
    x = swin.patch_embed(img)
    layer = 0
    for stage in swin.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            extra = [prompt_kv_reference(block, attended(layer))] if attended else []
            extra += [kv(layer)] if kv else []
            keys = torch.cat([k for k, _ in extra], 1) if extra else None
            values = torch.cat([v for _, v in extra], 1) if extra else None
            x = x + window_attention_reference(block, block.norm1(x), keys, values)
            x = x + block.mlp(block.norm2(x))
            layer += 1
    return swin.norm(x).mean(dim=(1, 2))


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
    with torch.no_grad():
        assert torch.allclose(window_attention(block, x)[0], window_attention_reference(block, x), atol=1e-5)
        for kv_first in (True, False):
            out, _ = window_attention(block, x, (keys, values), kv_first)
            assert torch.allclose(out, window_attention_reference(block, x, keys, values), atol=1e-5)


@pytest.mark.parametrize('kv_location', ['before', 'after'])
def test_vpt_and_e2vpt_prompts_in_every_window(kv_location):
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    vpt = prompted(dict(type='mmvpt.VPT', num_tokens=3), reference)
    expected = forward_reference(reference, img, attended=lambda i: vpt.prompt.at(vpt.prompt.prompts, i))
    assert torch.allclose(vpt(img)[0], expected, atol=1e-5)

    e2vpt = prompted(dict(type='mmvpt.E2VPT', num_tokens=3, num_kv_tokens=2, num_segments=4,
                          kv_location=kv_location), reference)
    m = e2vpt.prompt
    expected = forward_reference(reference, img, attended=lambda i: m.at(m.prompts, i),
                                 kv=lambda i: (m.at(m.kv_prompts, i), ) * 2)
    assert torch.allclose(e2vpt(img)[0], expected, atol=1e-5)
    assert not torch.allclose(expected, reference(img), atol=1e-3)  # the prompts matter


def test_vpt_shallow_prompts_average_over_windows_and_stop_at_merging():
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    model = prompted(dict(type='mmvpt.VPT', num_tokens=3, deep=False), reference)
    prompts = model.prompt.prompts[0]
    # re-statement: in each window, prompt queries attend to [prompts, window tokens] with no
    # bias or mask; their outputs are averaged over windows; image tokens see the prompts
    # as unbiased keys; stage 1 has no prompts.
    x, p = reference.patch_embed(img), prompts.expand(2, -1, -1)
    for block in reference.layers[0].blocks:
        attn, B, heads = block.attn, 2, block.attn.num_heads
        h, hp = block.norm1(x), block.norm1(p)
        k, v = prompt_kv_reference(block, p)  # per sample: prompt outputs depend on the image
        out_p = []
        ws, shift = block.window_size[0], block.shift_size[0]
        shifted = torch.roll(h, (-shift, -shift), (1, 2))
        for i in range(0, 8, ws):
            for j in range(0, 8, ws):
                tokens = torch.cat([hp, shifted[:, i:i + ws, j:j + ws].reshape(B, -1, 16)], 1)
                q, kk, vv = (tokens @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, -1)
                q, kk, vv = (t.reshape(B, -1, heads, 16 // heads).transpose(1, 2) for t in (q, kk, vv))
                a = (q[:, :, :3] @ kk.transpose(-1, -2) / math.sqrt(16 // heads)).softmax(-1)
                out_p.append((a @ vv).transpose(1, 2).reshape(B, 3, 16))
        out_p = torch.stack(out_p).mean(0) @ attn.proj.weight.T + attn.proj.bias
        x = x + window_attention_reference(block, h, k, v)
        p = p + out_p
        x, p = x + block.mlp(block.norm2(x)), p + block.mlp(block.norm2(p))
    x = reference.layers[1](x)
    expected = reference.norm(x).mean(dim=(1, 2))
    assert torch.allclose(model(img)[0], expected, atol=1e-5)


def test_pooled_feature_is_the_mean_of_image_tokens_only():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32)
    for prompt in (dict(type='mmvpt.VPT', num_tokens=5, deep=False),
                   dict(type='mmvpt.E2VPT', num_tokens=5, num_kv_tokens=2, num_segments=4)):
        model = prompted(prompt, out_type='featmap', out_indices=(0, 1))
        maps = model(img)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 32, 4, 4)]  # image grid only
        model.out_type, model.out_indices = 'avg_featmap', [1]
        assert torch.allclose(model(img)[0], maps[1].mean(dim=(2, 3)), atol=1e-6)


def test_cvpt_cross_attends_over_the_whole_map_with_shared_weights():
    torch.manual_seed(0)
    reference = timm_swin()
    img = torch.randn(2, 3, 32, 32)
    model = prompted(dict(type='mmvpt.CVPT', num_tokens=3, insert=3), reference)
    m = model.prompt
    x, layer = reference.patch_embed(img), 0
    for stage in reference.layers:
        x = stage.downsample(x)
        for block in stage.blocks:
            x = x + window_attention_reference(block, block.norm1(x))
            B, H, W, C = x.shape
            tokens, heads = x.reshape(B, -1, C), block.attn.num_heads
            q = (tokens @ block.attn.qkv.weight[:C].T + block.attn.qkv.bias[:C])
            _, wk, wv = block.attn.qkv.weight.chunk(3)
            _, bk, bv = block.attn.qkv.bias.chunk(3)
            prompts = m.at(m.prompts, layer)
            k = (prompts @ wk.T + bk).reshape(-1, heads, C // heads).transpose(0, 1)
            v = (prompts @ wv.T + bv).reshape(-1, heads, C // heads).transpose(0, 1)
            q = q.reshape(B, -1, heads, C // heads).transpose(1, 2)
            a = (q @ k.transpose(-1, -2) / math.sqrt(C // heads)).softmax(-1)
            ca = (a @ v).transpose(1, 2).reshape(B, -1, C) @ block.attn.proj.weight.T + block.attn.proj.bias
            x = x + ca.reshape(B, H, W, C)
            x = x + block.mlp(block.norm2(x))
            layer += 1
    expected = reference.norm(x).mean(dim=(1, 2))
    assert torch.allclose(model(img)[0], expected, atol=1e-5)
    # a learnable copy starts as the shared weights
    learnable = prompted(dict(type='mmvpt.CVPT', num_tokens=3, insert=3, ca_trainable=True), reference)
    learnable.prompt.prompts = model.prompt.prompts
    learnable.bind_prompt()
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
    assert torch.allclose(m.at(ctx.prompts, 3), stage1[1] + 2 * stage1[0])
    assert torch.equal(m.at(ctx.prompts, 2), stage1[0])  # the stage's first block: no connection


@pytest.mark.parametrize('prompt', [
    dict(type='mmvpt.VPT', num_tokens=3), dict(type='mmvpt.VPT', num_tokens=3, deep=False),
    dict(type='mmvpt.E2VPT', num_tokens=3, num_kv_tokens=2, num_segments=4),
    dict(type='mmvpt.CVPT', num_tokens=3), dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=0)])
def test_only_prompts_get_gradients(prompt):
    torch.manual_seed(0)
    model = prompted(prompt, drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith('prompt.') for n in with_grad)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad)
    assert not any(p.requires_grad for p in model.swin.parameters())


def test_swin_b_parameter_counts():
    """Swin-B: depths (2, 2, 18, 2), widths 128..1024, sum of block widths 12,032."""
    def count(prompt):
        with torch.device('meta'):  # shapes only
            model = PromptedSwin(arch='swin_base_patch4_window7_224', prompt=prompt)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
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
    out = {re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k): v
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
        model = PromptedSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        model.init_weights()
        assert (model.eval()(img)[0] - reference(img)).abs().max() <= 1e-5
    wider = tmp_path / 'wider.pth'
    torch.save(timm_swin(embed_dim=24).state_dict(), wider)
    model = PromptedSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(wider)))
    with pytest.raises(CheckpointMismatchError, match=r'layers.0.blocks.0.attn.qkv.weight: checkpoint '
                                                      r'\(72, 24\) vs model \(48, 16\)'):
        model.init_weights()
    state = reference.state_dict()
    del state['norm.weight']
    torch.save(state, tmp_path / 'headless.pth')
    model = PromptedSwin(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'headless.pth')))
    with pytest.raises(CheckpointMismatchError, match='missing keys: norm.weight'):
        model.init_weights()
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        missing = dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth'))
        PromptedSwin(**TINY, init_cfg=missing).init_weights()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="arch='vit_base_patch16_224'.*needs a timm SwinTransformer"):
        PromptedSwin(arch='vit_base_patch16_224', arch_cfg=dict(depth=1))
    with pytest.raises(ValueError, match="arch='swin_nano': Unknown model"):
        PromptedSwin(arch='swin_nano')
    with pytest.raises(ValueError, match='need distinct stages of 2'):
        prompted(out_indices=(0, 2))
    with pytest.raises(ValueError, match='num_segments=5: must divide the token widths 16, 32'):
        prompted(dict(type='mmvpt.E2VPT', num_tokens=2, num_segments=5))
    with pytest.raises(ValueError, match='projection needs one token width'):
        prompted(dict(type='mmvpt.VPT', num_tokens=2, proj_dim=8))
