"""Each method's forward equals a plain re-statement of its equations (tests/vit_reference.py)
on a tiny ViT, in eval mode (no dropout)."""
import pytest
import torch

from mmvpt.models import PromptedViT

from . import vit_reference as ref

TINY = dict(arch='vit_base_patch16_224', img_size=32,
            arch_cfg=dict(patch_size=8, embed_dim=32, depth=3, num_heads=4))
L, D, H = 3, 32, 4


def build(prompt, **kwargs):
    torch.manual_seed(0)
    model = PromptedViT(prompt=prompt, **{**TINY, **kwargs}).eval()
    # Random backbone weights large enough for peaked attention (timm's init gives nearly
    # uniform attention at this width, which would hide where a branch joins the block).
    with torch.no_grad():
        for p in model.vit.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 2 else 0.02))
    return model


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def finish(model, x):
    return model.vit.norm(x)[:, 0]


def check(model, expected, images):
    with torch.no_grad():
        (out, ) = model(images)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_no_prompt_equals_timm(images):
    model = build(None)
    with torch.no_grad():
        expected = model.vit.forward_features(images)[:, 0]
    check(model, expected, images)


@pytest.mark.parametrize('deep', [True, False])
def test_vpt(images, deep):
    model = build(dict(type='mmvpt.VPT', num_tokens=4, deep=deep))
    P = model.prompt.prompts
    x = ref.embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        if i == 0 or deep:
            x = torch.cat([x[:, :1], P[i if deep else 0].expand(2, -1, -1),
                           x[:, 1 + (4 if i else 0):]], dim=1)
        x, _ = ref.block(blk, x)
    check(model, finish(model, x), images)


@pytest.mark.parametrize('share_kv', [True, False])
@pytest.mark.parametrize('kv_location', ['before', 'after'])
def test_e2vpt_visual_and_kv_prompts(images, share_kv, kv_location):
    model = build(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3, share_kv=share_kv,
                       kv_location=kv_location))
    m = model.prompt
    assert m.kv_prompts.shape == (L, H, 3, D // H)
    x = ref.embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        x = torch.cat([x[:, :1], m.prompts[i].expand(2, -1, -1), x[:, 1 + (4 if i else 0):]], 1)
        kv = (m.kv_prompts[i], m.kv_prompts[i] if share_kv else m.v_prompts[i])
        x, _ = ref.block(blk, x, kv=kv, kv_first=kv_location == 'before')
    check(model, finish(model, x), images)


def test_e2vpt_kv_location_is_equivalent_for_vit(images):
    outs = []
    for location in ('before', 'after'):
        model = build(dict(type='mmvpt.E2VPT', num_tokens=2, num_kv_tokens=3, kv_location=location))
        with torch.no_grad():
            outs.append(model(images)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize('prune_mode', ['remove', 'mask'])
@pytest.mark.parametrize('layout', ['contiguous', 'interleaved'])
def test_e2vpt_pruning_masks(images, prune_mode, layout):
    model = build(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
                       segment_layout=layout, prune_mode=prune_mode))
    m = model.prompt
    token_mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.float)
    segment_mask = torch.ones(L, 4, 4)
    segment_mask[0, 0, 1] = 0
    segment_mask[2, 3, 0] = 0
    m.token_mask.copy_(token_mask)
    m.segment_mask.copy_(segment_mask)
    x = ref.embed(model.vit, images)
    num_prev = 0
    for i, blk in enumerate(model.vit.blocks):
        dims = torch.ones(4, D)
        for t in range(4):
            for r in range(4):
                if segment_mask[i, t, r] == 0:
                    if layout == 'contiguous':
                        dims[t, r * 8:(r + 1) * 8] = 0
                    else:
                        dims[t, r::4] = 0
        prompts = m.prompts[i] * dims * token_mask[i, :, None]
        if prune_mode == 'remove':
            prompts = prompts[token_mask[i].bool()]
        x = torch.cat([x[:, :1], prompts.expand(2, -1, -1), x[:, 1 + num_prev:]], 1)
        num_prev = prompts.shape[0]
        x, _ = ref.block(blk, x, kv=(m.kv_prompts[i], m.kv_prompts[i]))
    check(model, finish(model, x), images)


def test_e2vpt_zero_length_prompts_equal_plain_model(images):
    model = build(dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=0))
    assert sum(p.numel() for p in model.prompt.parameters()) == 0
    with torch.no_grad():
        expected = model.vit.forward_features(images)[:, 0]
    check(model, expected, images)


# 5 prompts x 4 heads < width 32 takes the folded cross-attention, 12 x 4 the plain one.
@pytest.mark.parametrize('num_tokens', [5, 12])
@pytest.mark.parametrize('insert', [1, 2, 3, 4, 5])
def test_cvpt_every_insert_position(images, insert, num_tokens):
    model = build(dict(type='mmvpt.CVPT', num_tokens=num_tokens, insert=insert))
    P = model.prompt.prompts
    x = ref.embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        x, _ = ref.block(blk, x, ca=lambda h: ref.cross_attention(blk.attn, h, P[i]), insert=insert)
    check(model, finish(model, x), images)


@pytest.mark.parametrize('ca_init,ca_trainable', [('shared', True), ('random', False),
                                                  ('random', True)])
def test_cvpt_own_cross_attention(images, ca_init, ca_trainable):
    model = build(dict(type='mmvpt.CVPT', num_tokens=5, ca_init=ca_init, ca_trainable=ca_trainable))
    m = model.prompt
    assert all(p.requires_grad == ca_trainable for p in m.cross_attn.parameters())
    model.init_weights()  # binds: copies the self-attention for ca_init='shared'
    x = ref.embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        ca = m.cross_attn[i]
        if ca_init == 'shared':
            torch.testing.assert_close(ca.qkv.weight, blk.attn.qkv.weight, rtol=0, atol=0)
            assert ca.qkv.weight.data_ptr() != blk.attn.qkv.weight.data_ptr()
        x, _ = ref.block(blk, x, ca=lambda h: ref.cross_attention(ca, h, m.prompts[i]), insert=3)
    check(model, finish(model, x), images)


@pytest.mark.parametrize('da', [True, False])
@pytest.mark.parametrize('k', [0, 3])
def test_ivpt(images, da, k):
    model = build(dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=k, dynamic_aggregation=da))
    m = model.prompt
    if da:
        with torch.no_grad():  # away from the identity init, so Γ matters
            m.aggregation.add_(torch.randn_like(m.aggregation) * 0.3)
    P = m.prompts
    x = ref.embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        if i == 0:
            hat = P[0]
        else:
            gamma = m.aggregation[i - 1] if da else torch.eye(4)
            hat = P[i] + gamma @ P[i - 1]
        x = torch.cat([x[:, :1], hat.expand(2, -1, -1), x[:, 1 + (4 if i else 0):]], 1)
        x, a = ref.block(blk, x)
        if k and i < L - 1:
            cls_to_image = a[:, :, 0, 1 + 4:].mean(1)  # (B, image tokens)
            order = cls_to_image.argsort(dim=-1, descending=True)[:, :k]
            x = x.clone()
            for b in range(2):
                for j in range(k):
                    x[b, 1 + 4 + order[b, j]] += m.ar_prompts[i, j]
    check(model, finish(model, x), images)


def test_ivpt_ar_adds_in_descending_attention_order():
    from mmvpt.models.prompts import IVPT
    m = IVPT(num_tokens=1, num_ar_tokens=2, num_layers=2, embed_dim=4, num_heads=1)
    with torch.no_grad():
        m.ar_prompts.copy_(torch.tensor([[[1., 0, 0, 0], [0, 10., 0, 0]]]))
    x = torch.zeros(1, 2 + 3, 4)  # CLS, one prompt, three image tokens
    row = torch.tensor([[0.2, 0.7, 0.1]])  # image token 1 most attended, then 0
    out = m.after_block(None, 0, x, row, image_start=2)
    assert out[0, 2 + 1].tolist() == [1., 0, 0, 0]
    assert out[0, 2 + 0].tolist() == [0, 10., 0, 0]
    assert out[0, :2].abs().sum() == 0 and out[0, 2 + 2].abs().sum() == 0
