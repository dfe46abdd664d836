"""What makes prompt tuning cheap keeps its results: prompt tokens whose outputs the next
block replaces are computed as keys and values only (the outputs and the gradients of every
tuned tensor equal the full-sequence computation), and gradient checkpointing (``with_cp``)
gives the gradients of the run without it."""
import pytest
import torch

from tests.helpers.tiny_models import peaked
from tests.helpers.vit_reference import full_sequence_forward

# Prompt tokens not carried to the next block: keys and values only.
KV_ONLY = {
    'vpt_deep': dict(type='mmvpt.VPT', num_tokens=4),
    'e2vpt_before_shared': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3),
    'e2vpt_after_separate': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3,
                                 kv_location='after', share_kv=False),
    'e2vpt_pruned_remove': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2,
                                num_segments=4, prune_mode='remove'),
    'e2vpt_pruned_mask': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2,
                              num_segments=4, prune_mode='mask'),
    'ivpt_ar': dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=3),
    'ivpt_no_ar': dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=0),
}


def build(backbone, prompt, **kwargs):
    """The tiny backbone with peaked attention (as in test_methods.py), some E2VPT tokens and
    segments pruned, iVPT's aggregation away from its identity init."""
    model = peaked(prompt, backbone, **kwargs)
    with torch.no_grad():
        m = model.prompt
        if hasattr(m, 'token_mask'):  # some tokens and segments pruned
            m.token_mask[:, 1] = 0
            m.segment_mask[:, 2, 3] = m.segment_mask[:, 0, 0] = 0
        if getattr(m, 'aggregation', None) is not None:  # away from the identity init
            m.aggregation.add_(torch.randn_like(m.aggregation) * 0.3)
    return model


def run(forward, model, img, seed):
    """Output and the gradients of every tuned tensor, for one train-mode step."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = forward(model, img)[0]
    out.pow(2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(got, expected, atol):
    (out, grads), (ref_out, ref_grads) = got, expected
    assert (out - ref_out).abs().max() <= atol
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in ref_grads.items():
        assert grad.abs().sum() > 0, name  # a tensor that trains
        assert (grads[name] - grad).abs().max() <= atol, name


@pytest.mark.parametrize('drop_path_rate', [0., 0.3])
@pytest.mark.parametrize('method', sorted(KV_ONLY))
def test_keys_and_values_only_equal_the_full_sequence(method, drop_path_rate):
    # float64: the two computations sum in other orders; what is compared is the algebra
    model = build('vit', KV_ONLY[method], drop_path_rate=drop_path_rate).double().train()
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    got = run(lambda m, x: m(x), model, img, seed=3)  # prompt dropout 0.1 per sample, drop-path
    assert_same(got, run(full_sequence_forward, model, img, seed=3), atol=1e-5)


def test_keys_and_values_only_equal_the_full_sequence_in_the_pruning_score_pass():
    # PromptPruningHook's pass: eval mode, gradients with respect to the masks.
    model = build('vit', KV_ONLY['e2vpt_pruned_mask']).double().eval()
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = [model.prompt.token_mask, model.prompt.segment_mask]

    def grads(forward):
        for mask in masks:
            mask.requires_grad_(True)
        try:
            return torch.autograd.grad(forward(model, img)[0].pow(2).sum(), masks)
        finally:
            for mask in masks:
                mask.requires_grad_(False)
    for got, expected in zip(grads(lambda m, x: m(x)), grads(full_sequence_forward)):
        assert expected.abs().sum() > 0
        assert (got - expected).abs().max() <= 1e-5


def test_no_prompt_query_attention_row_or_mlp_is_computed():
    # The MLP of every block sees the CLS and image tokens only, never the prompts.
    model = build('vit', KV_ONLY['vpt_deep']).eval()
    seen = []
    for blk in model.vit.blocks:
        blk.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [1 + 16] * 3  # CLS + 4 x 4 patches, no prompt tokens


CP_METHODS = {
    'vpt_deep': dict(type='mmvpt.VPT', num_tokens=4),
    'vpt_shallow': dict(type='mmvpt.VPT', num_tokens=4, deep=False),
    'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=3, num_segments=4),
    'cvpt': dict(type='mmvpt.CVPT', num_tokens=4, ca_trainable=True),
    'ivpt': dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=3),
}


@pytest.mark.parametrize('backbone', ['vit', 'swin'])
@pytest.mark.parametrize('method', sorted(CP_METHODS))
def test_with_cp_gives_the_same_gradients(backbone, method):
    prompt = dict(CP_METHODS[method])
    if backbone == 'swin' and method == 'ivpt':
        prompt['num_ar_tokens'] = 0  # no CLS token on Swin
    model = build(backbone, prompt, drop_path_rate=0.3).train()  # prompt dropout 0.1 too
    model.derive_from_frozen()
    img = torch.randn(2, 3, 32, 32)
    mlp_calls = []
    for blk in model.blocks:
        blk.mlp.register_forward_hook(lambda *args: mlp_calls.append(1))
    plain = run(lambda m, x: m(x), model, img, seed=5)
    calls_without_cp = len(mlp_calls)
    model.with_cp = True
    checkpointed = run(lambda m, x: m(x), model, img, seed=5)
    assert_same(checkpointed, plain, atol=1e-6)
    assert len(mlp_calls) > 2 * calls_without_cp  # blocks ran again in backward
