"""Each method's forward equals a plain re-statement of its equations
(tests/helpers/vit_reference.py) on a tiny ViT: in eval mode (no dropout), and in train mode
given the prompt dropout masks the model drew. (E2VPT's pruned forward: tests/test_engine/
test_pruning.py.)"""
import pytest
import torch

from mmvpt.models.prompts.cvpt import CVPT
from mmvpt.models.utils import probe_attention

from tests.helpers import vit_reference as ref
from tests.helpers.prompt_dropout import (
    PROMPT_DROPOUT,
    dropped,
    masks_per_draw,
    record_prompt_dropout,
    spy_folded_cross_attention,
)
from tests.helpers.tiny_models import peaked
from tests.helpers.vit_reference import assert_forward_equals, cvpt_reference, tokens_reference

L, D, H = 3, 32, 4  # the tiny ViT's blocks, width and heads


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def ivpt_mixed_prompts(m):
    """P̂^0 = P^0, P̂^i = P^i + Γ^(i-1) P^(i-1) (Γ = I without dynamic aggregation)."""
    P = m.prompts
    mixed = [P[0]]
    for i in range(1, L):
        gamma = m.aggregation[i - 1] if m.aggregation is not None else torch.eye(P.shape[1])
        mixed.append(P[i] + gamma @ P[i - 1])
    return mixed


def test_no_prompt_equals_timm(images):
    model = peaked(None)
    with torch.no_grad():
        expected = model.vit.forward_features(images)[:, 0]
    assert_forward_equals(model, expected, images)


@pytest.mark.parametrize('deep', [True, False])
def test_vpt(images, deep):
    model = peaked(dict(type='mmvpt.VPT', num_tokens=4, deep=deep))
    P = model.prompt.prompts
    expected = tokens_reference(model, images,
                                lambda i: P[i] if deep else (P[0] if i == 0 else None))
    assert_forward_equals(model, expected, images)


@pytest.mark.parametrize('share_kv', [True, False])
@pytest.mark.parametrize('kv_location', ['before', 'after'])
def test_e2vpt_visual_and_kv_prompts(images, share_kv, kv_location):
    model = peaked(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3, share_kv=share_kv,
                       kv_location=kv_location))
    m = model.prompt
    assert m.kv_prompts.shape == (L, H, 3, D // H)

    def kv(i):
        return m.kv_prompts[i], m.kv_prompts[i] if share_kv else m.v_prompts[i]
    expected = tokens_reference(model, images, lambda i: m.prompts[i], kv=kv)
    assert_forward_equals(model, expected, images)
    # On ViT the key order cannot change the output; it decides where the key-value prompts
    # sit among the keys that the attention analysis and the key masks read.
    records = []
    with torch.no_grad(), probe_attention(model, lambda kind, record: records.append(record)):
        model(images)
    first = records[0]  # block 0: keys [before, CLS and image tokens, after]
    before = 3 + 4 if kv_location == 'before' else 4  # the block's prompts: keys only, before
    assert (first['num_before'], first['num_after']) == (before, 3 * (kv_location == 'after'))
    kv_keys = slice(0, 3) if kv_location == 'before' else slice(-3, None)
    # the CLS row over the key-value prompts equals the reference's (keys [KV, tokens])
    x = ref.embed(model.vit, images)
    x = torch.cat([x[:, :1], m.prompts[0].expand(2, -1, -1), x[:, 1:]], 1)
    blk = model.vit.blocks[0]
    _, a = ref.attention(blk.attn, blk.norm1(x), kv(0))
    torch.testing.assert_close(first['probs'][:, :, 0, kv_keys], a[:, :, 0, :3], rtol=0, atol=1e-5)


def test_e2vpt_kv_location_is_equivalent_for_vit(images):
    outs = []
    for location in ('before', 'after'):
        model = peaked(dict(type='mmvpt.E2VPT', num_tokens=2, num_kv_tokens=3,
                            kv_location=location))
        with torch.no_grad():
            outs.append(model(images)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)


def test_e2vpt_zero_length_prompts_equal_plain_model(images):
    model = peaked(dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=0))
    assert sum(p.numel() for p in model.prompt.parameters()) == 0
    with torch.no_grad():
        expected = model.vit.forward_features(images)[:, 0]
    assert_forward_equals(model, expected, images)


# 5 prompts x 4 heads < width 32 takes the folded cross-attention, 12 x 4 the plain one.
@pytest.mark.parametrize('num_tokens', [5, 12])
@pytest.mark.parametrize('insert', [1, 2, 3, 4, 5])
def test_cvpt_every_insert_position(images, insert, num_tokens):
    # built by the point's name, checked against the paper's numbered position
    name = ('before_attn', 'beside_attn', 'after_attn', 'mlp_input', 'after_mlp')[insert - 1]
    assert CVPT.insert_point(insert) == name
    model = peaked(dict(type='mmvpt.CVPT', num_tokens=num_tokens, insert=name))
    assert model.prompt.insert == name
    P = model.prompt.prompts
    assert_forward_equals(model, cvpt_reference(model, images, lambda i: P[i], insert=insert),
                          images)


@pytest.mark.parametrize('ca_init,ca_trainable', [('shared', True), ('random', False),
                                                  ('random', True)])
def test_cvpt_own_cross_attention(images, ca_init, ca_trainable):
    model = peaked(dict(type='mmvpt.CVPT', num_tokens=5, ca_init=ca_init,
                        ca_trainable=ca_trainable))
    m = model.prompt
    assert all(p.requires_grad == ca_trainable for p in m.cross_attn.parameters())
    model.init_weights()  # binds: copies the self-attention for ca_init='shared'
    for ca, blk in zip(m.cross_attn, model.vit.blocks):
        if ca_init == 'shared':
            torch.testing.assert_close(ca.qkv.weight, blk.attn.qkv.weight, rtol=0, atol=0)
            assert ca.qkv.weight.data_ptr() != blk.attn.qkv.weight.data_ptr()
    expected = cvpt_reference(model, images, lambda i: m.prompts[i],
                              cross_attn=lambda i: m.cross_attn[i])
    assert_forward_equals(model, expected, images)


@pytest.mark.parametrize('da', [True, False])
@pytest.mark.parametrize('k', [0, 3])
def test_ivpt(images, da, k):
    model = peaked(dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=k, dynamic_aggregation=da))
    m = model.prompt
    if da:
        with torch.no_grad():  # away from the identity init, so Γ matters
            m.aggregation.add_(torch.randn_like(m.aggregation) * 0.3)
    assert (m.aggregation is not None) == da
    mixed = ivpt_mixed_prompts(m)
    assert_forward_equals(model, tokens_reference(model, images, lambda i: mixed[i],
                                                  ar_prompts=m.ar_prompts), images)


def test_ivpt_ar_adds_in_descending_attention_order():
    from mmvpt.models.prompts import IVPT
    m = IVPT(num_tokens=1, num_ar_tokens=2, num_layers=2, embed_dim=4, num_heads=1)
    with torch.no_grad():
        m.ar_prompts.copy_(torch.tensor([[[1., 0, 0, 0], [0, 10., 0, 0]]]))
    x = torch.zeros(1, 2 + 3, 4)  # CLS, one prompt, three image tokens
    row = torch.tensor([[0.2, 0.7, 0.1]])  # image token 1 most attended, then 0
    out = m.after_block(m.start(1), 0, x, row, image_start=2)
    assert out[0, 2 + 1].tolist() == [1., 0, 0, 0]
    assert out[0, 2 + 0].tolist() == [0, 10., 0, 0]
    assert out[0, :2].abs().sum() == 0 and out[0, 2 + 2].abs().sum() == 0


def test_cvpt_folds_on_cpu_only():
    """The folded cross-attention is chosen by FLOPs on a CPU; on another device (a GPU; the
    meta device stands in for one here) the plain form, whatever the prompt count."""
    from mmvpt.models.utils.attention import _fold_pays
    attn = peaked(dict(type='mmvpt.CVPT', num_tokens=5)).blocks[0].attn
    for device, expected in (('cpu', True), ('meta', False)):
        x = torch.zeros(2, 17, 32, device=device)
        prompts = torch.zeros(1, 5, 32, device=device)
        k = torch.zeros(1, 4, 5, 8, device=device)
        assert _fold_pays(attn, x, prompts, k) == expected, device
    many = torch.zeros(1, 12, 32)  # 12 prompts x 4 heads >= width 32: plain on CPU too
    assert not _fold_pays(attn, torch.zeros(2, 17, 32), many, torch.zeros(1, 4, 12, 8))


# -- CVPT's own trainable cross-attention ------------------------------------------------------
@pytest.mark.parametrize('num_tokens', [5, 12])  # folded and plain cross-attention
def test_cvpt_trainable_cross_attention_copy_is_used_and_trains(images, num_tokens):
    model = peaked(dict(type='mmvpt.CVPT', num_tokens=num_tokens, ca_trainable=True))
    m = model.prompt
    model.init_weights()  # the copies start equal to the block attention...
    with torch.no_grad():  # ...so move them away: the forward must follow the copies
        for p in m.cross_attn.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        with_copies = cvpt_reference(model, images, lambda i: m.prompts[i],
                                     cross_attn=lambda i: m.cross_attn[i])
        with_block_attention = cvpt_reference(model, images, lambda i: m.prompts[i])
    assert_forward_equals(model, with_copies, images)
    assert (with_copies - with_block_attention).abs().max() > 1e-2

    # one optimizer step moves every tensor of every copy; the backbone stays as it was
    model.train()
    backbone = {n: p.clone() for n, p in model.vit.named_parameters()}
    copies = {n: p.detach().clone() for n, p in m.cross_attn.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(images)[0].pow(2).sum().backward()
    optimizer.step()
    assert len(copies) == 4 * L  # qkv and proj, weight and bias, per block
    for name, p in m.cross_attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert (p - copies[name]).abs().max() > 0, name
    for name, p in model.vit.named_parameters():
        assert torch.equal(p, backbone[name]), name


# -- train mode: prompt dropout -----------------------------------------------------------------
TRAIN_METHODS = {
    'vpt_deep': dict(type='mmvpt.VPT', num_tokens=4),
    'vpt_shallow': dict(type='mmvpt.VPT', num_tokens=4, deep=False),
    'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3),
    # 5 x 4 heads: the folded cross-attention (W_q, W_o on the prompt side); 12: the plain one
    'cvpt_folded': dict(type='mmvpt.CVPT', num_tokens=5),
    'cvpt_plain': dict(type='mmvpt.CVPT', num_tokens=12),
    'ivpt': dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=3),
}


def train_reference(method, model, images, seen):
    """The method's reference forward with ``seen(i, prompts)``: what block i's prompts
    become after dropout."""
    m = model.prompt
    if method == 'vpt_deep':
        return tokens_reference(model, images, lambda i: seen(i, m.prompts[i]))
    if method == 'vpt_shallow':
        return tokens_reference(model, images, lambda i: seen(0, m.prompts[0]) if i == 0 else None)
    if method == 'e2vpt':
        return tokens_reference(model, images, lambda i: seen(i, m.prompts[i]),
                                kv=lambda i: (m.kv_prompts[i], m.kv_prompts[i]))
    if method.startswith('cvpt'):
        return cvpt_reference(model, images, lambda i: seen(i, m.prompts[i]))
    mixed = ivpt_mixed_prompts(m)  # dropout acts on the mixed prompts P̂
    return tokens_reference(model, images, lambda i: seen(i, mixed[i]), ar_prompts=m.ar_prompts)


@pytest.mark.parametrize('mode', ['sample', 'batch'])
@pytest.mark.parametrize('method', sorted(TRAIN_METHODS))
def test_train_mode_output_equals_reference_with_the_same_dropout_masks(images, monkeypatch,
                                                                        method, mode):
    model = peaked({**TRAIN_METHODS[method], 'dropout': PROMPT_DROPOUT, 'dropout_mode': mode})
    m = model.prompt
    if method == 'ivpt':
        with torch.no_grad():  # away from the identity init, so Γ matters
            m.aggregation.add_(torch.randn_like(m.aggregation) * 0.3)
    folded_calls = spy_folded_cross_attention(monkeypatch)
    masks = record_prompt_dropout(monkeypatch)
    model.train()
    torch.manual_seed(2)
    (out, ) = model(images)  # with gradients on, as in training (picks the fold as then)
    B = images.shape[0]

    assert len(masks) == (1 if method == 'vpt_shallow' else L)
    for mask in masks:
        per_draw = masks_per_draw(mask)
        if mode == 'sample':  # one mask per sample, and they differ
            assert per_draw.shape[0] == B and (per_draw[0] != per_draw[1]).any()
        else:  # one mask for the whole batch
            assert per_draw.shape[0] == 1
        assert 0.2 < per_draw.float().mean() < 0.8  # about half the elements dropped
    if method.startswith('cvpt'):
        assert len(folded_calls) == (L if method == 'cvpt_folded' else 0)

    with torch.no_grad():
        expected = train_reference(method, model, images, lambda i, p: dropped(p, masks[i]))
        if mode == 'sample':  # sample 0's prompts for the whole batch give another output
            batch_shared = train_reference(method, model, images,
                                           lambda i, p: dropped(p, masks_per_draw(masks[i])[0]))
            assert (batch_shared - expected).abs().max() > 1e-3
        no_dropout = train_reference(method, model, images, lambda i, p: p)
        assert (no_dropout - expected).abs().max() > 1e-3
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-5)


# -- VPT's prompt projection ------------------------------------------------------------------
# proj_dim = D: prompts that skipped the projection would still fit the token width
@pytest.mark.parametrize('deep,proj_dim', [(True, 8), (False, 8), (True, D)])
def test_vpt_projected_prompts_equal_reference_and_train(images, deep, proj_dim):
    model = peaked(dict(type='mmvpt.VPT', num_tokens=4, deep=deep, proj_dim=proj_dim))
    m = model.prompt
    assert m.prompts.shape == (L if deep else 1, 4, proj_dim)
    W, bias = m.proj.weight, m.proj.bias
    assert W.shape == (D, proj_dim) and W.requires_grad and bias.requires_grad

    def projected(i):  # prompts live in proj_dim dims; W maps them to D before they join
        if not deep and i > 0:
            return None
        return m.prompts[i] @ W.T + bias
    with torch.no_grad():
        assert_forward_equals(model, tokens_reference(model, images, projected), images)

    model.train()
    model(images)[0].pow(2).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {'prompt.prompts', 'prompt.proj.weight', 'prompt.proj.bias'}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
