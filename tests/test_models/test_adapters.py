"""The adapter-style baselines (LoRA, SSF, BitFit, AdaptFormer, Adapter) on the prompted
backbones: each equals a re-statement of its equations written here from timm's modules
(float64), trains only its own tensors, merges into the frozen weights where it can, and
serves several tasks in one batch."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.adapters.base import last_affine, op_module

from ..helpers.peft_reference import peft_blocks, peft_twin
from ..helpers.tiny_models import BACKBONES, build, vit_arch

ADAPTERS = {
    'lora_qv': dict(type='mmvpt.LoRA', rank=4, alpha=8),
    'lora_all': dict(type='mmvpt.LoRA', rank=2, targets=('qkv', 'proj', 'fc1', 'fc2')),
    'lora_k': dict(type='mmvpt.LoRA', rank=3, targets=('k', 'fc2')),
    'dora': dict(type='mmvpt.DoRA', rank=2, targets=('q', 'v', 'fc1')),
    'ssf': dict(type='mmvpt.SSF'),
    'bitfit': dict(type='mmvpt.BitFit'),
    'bitfit_tables': dict(type='mmvpt.BitFit', position_bias=True),
    'adaptformer': dict(type='mmvpt.AdaptFormer', bottleneck=8, dropout=0.),
    'adapter_houlsby': dict(type='mmvpt.Adapter', bottleneck=8),
    'adapter_pfeiffer': dict(type='mmvpt.Adapter', bottleneck=8, placement=('mlp', ),
                             activation='gelu'),
}
MERGEABLE = ('lora_qv', 'lora_all', 'lora_k', 'ssf', 'bitfit', 'bitfit_tables')
#: methods that need Swin (relative-position tables)
SWIN_ONLY = ('bitfit_tables', )


def on_both(names):
    """(backbone, name) pairs of ``names`` for the tests that run both backbones."""
    return [(backbone, name) for backbone in ('vit', 'swin') for name in names
            if backbone == 'swin' or name not in SWIN_ONLY]


def randomised(backbone, name, seed=0):
    """A float64 tiny model with the method ``name`` whose tensors are all moved away from
    their init (zero up-projections would hide an adapter)."""
    torch.manual_seed(seed)
    model = build(ADAPTERS[name], backbone=backbone).double().eval()
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def tensor(method, name, layer):
    return method.layer_of(getattr(method, name), layer)


# -- re-statements --------------------------------------------------------------------------
def op_reference(method, layer, name, x, out):
    """A frozen operation's output changed by the method, from the method's equations."""
    kind = type(method).__name__
    if kind == 'LoRA':
        if layer is None:
            return out

        def update(target):
            a, b = (tensor(method, f'lora_a_{target}', layer),
                    tensor(method, f'lora_b_{target}', layer))
            return method.alpha / method.rank * (x @ a.T @ b.T)
        if name == 'qkv':
            rows = list(out.chunk(3, -1))
            for i, target in enumerate('qkv'):
                if target in method.targets:
                    rows[i] = rows[i] + update(target)
            out = torch.cat(rows, -1)
            return out + update('qkv') if 'qkv' in method.targets else out
        return out + update(name) if name in method.targets else out
    if kind == 'SSF':
        return out * vector(method, 'scale', name, layer) + vector(method, 'shift', name, layer)
    if kind == 'BitFit':
        return out + vector(method, 'bias', name, layer)
    return out


def vector(method, prefix, name, layer):
    """SSF's / BitFit's vector of operation ``name``; for ``'merge_norm'``, ``layer`` counts
    the patch mergings."""
    if name == 'merge_norm':
        return getattr(method, f'{prefix}_merge_norm')[layer]
    return (getattr(method, f'{prefix}_{name}') if layer is None
            else tensor(method, f'{prefix}_{name}', layer))


def branch_reference(method, layer, name, x, out):
    """A block branch's output changed by the method (Adapter, AdaptFormer)."""
    kind = type(method).__name__

    def linear(prefix, h):
        return (h @ tensor(method, f'{prefix}_weight', layer).T
                + tensor(method, f'{prefix}_bias', layer))
    if kind == 'AdaptFormer' and name == 'mlp':
        return out + method.scale * linear('up', F.relu(linear('down', x)))
    if kind == 'Adapter' and name in method.placement:
        act = F.relu if method.activation == 'relu' else F.gelu
        return out + linear(f'{name}_up', act(linear(f'{name}_down', out)))
    return out


def vit_reference(model, img):
    """The ViT written out: explicit qkv, softmax attention, projection and MLP, with the
    method's changes at each operation and branch."""
    vit, method = model.vit, model.prompt

    def op(layer, name, x, out):
        return op_reference(method, layer, name, x, out)
    x = op(None, 'patch_embed', img, vit.patch_embed(img))
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], 1) + vit.pos_embed
    for layer, blk in enumerate(vit.blocks):
        attn, H = blk.attn, blk.attn.num_heads
        h = op(layer, 'norm1', x, blk.norm1(x))
        qkv = op(layer, 'qkv', h, h @ attn.qkv.weight.T + attn.qkv.bias)
        B, N, C3 = qkv.shape
        q, k, v = qkv.view(B, N, 3, H, C3 // 3 // H).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(B, N, -1)
        sa = op(layer, 'proj', o, o @ attn.proj.weight.T + attn.proj.bias)
        x = x + branch_reference(method, layer, 'attn', x, sa)
        h = op(layer, 'norm2', x, blk.norm2(x))
        f = F.gelu(op(layer, 'fc1', h, h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias))
        f = op(layer, 'fc2', f, f @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias)
        x = x + branch_reference(method, layer, 'mlp', x, f)
    return op(None, 'norm', x, vit.norm(x))[:, 0]


def swin_branch_reference(model, img):
    """timm's Swin blocks taken apart at their two branches, for the branch methods."""
    swin, method, layer = model.swin, model.prompt, 0
    x = swin.patch_embed(img)
    for stage in swin.layers:
        x = stage.downsample(x)
        for blk in stage.blocks:
            B, H, W, C = x.shape
            sa = blk._attn(blk.norm1(x))
            x = x + branch_reference(method, layer, 'attn', x.reshape(B, -1, C),
                                     sa.reshape(B, -1, C)).view(B, H, W, C)
            mlp = blk.mlp(blk.norm2(x.reshape(B, -1, C)))
            x = x + branch_reference(method, layer, 'mlp', x.reshape(B, -1, C),
                                     mlp).view(B, H, W, C)
            layer += 1
    return swin.norm(x).mean(dim=(1, 2))


class Changed(torch.nn.Module):
    """A frozen timm module whose output ``change(x, out)`` replaces, channels last."""

    def __init__(self, module, change, channels_first=False):
        super().__init__()
        self.module, self.change, self.channels_first = module, change, channels_first

    def forward(self, x):
        out = self.module(x)
        if self.channels_first:  # a conv's (B, C, H, W)
            return self.change(x, out.movedim(1, -1)).movedim(-1, 1)
        return self.change(x, out)


def swin_op_reference(model, img):
    """timm's own Swin forward with the method's change at the output of each operation
    where SSF's Swin code scales and shifts: the patch projection, the patch embedding's norm,
    each block's norm1, qkv, proj, norm2, fc1, fc2, each patch merging's norm, the final norm."""
    swin, method = copy.deepcopy(model.swin), model.prompt

    def change(module, layer, name, **kw):
        return Changed(module, lambda x, out: op_reference(method, layer, name, x, out), **kw)
    swin.patch_embed.proj = change(swin.patch_embed.proj, None, 'patch_proj', channels_first=True)
    swin.patch_embed.norm = change(swin.patch_embed.norm, None, 'patch_embed')
    layer = 0
    for index, stage in enumerate(swin.layers):
        if index:
            stage.downsample.norm = change(stage.downsample.norm, index - 1, 'merge_norm')
        for blk in stage.blocks:
            blk.norm1, blk.norm2 = (change(blk.norm1, layer, 'norm1'),
                                    change(blk.norm2, layer, 'norm2'))
            blk.attn.qkv, blk.attn.proj = (change(blk.attn.qkv, layer, 'qkv'),
                                           change(blk.attn.proj, layer, 'proj'))
            blk.mlp.fc1, blk.mlp.fc2 = (change(blk.mlp.fc1, layer, 'fc1'),
                                        change(blk.mlp.fc2, layer, 'fc2'))
            layer += 1
    swin.norm = change(swin.norm, None, 'norm')
    if getattr(method, 'position_bias', False):  # BitFit's changes of the tables
        with torch.no_grad():
            for layer, blk in enumerate(blk for stage in swin.layers for blk in stage.blocks):
                blk.attn.relative_position_bias_table += tensor(method, 'bias_position', layer)
    return swin.forward_features(img).mean(dim=(1, 2))


@pytest.mark.parametrize('name', MERGEABLE)
def test_swin_operations_equal_the_re_statement(name):
    model = randomised('swin', name)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = swin_op_reference(model, img)
        assert not torch.allclose(model.swin.forward_features(img).mean(dim=(1, 2)), expected,
                                  atol=1e-3)
        torch.testing.assert_close(model(img)[0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('size', [(8, 8), (7, 5)])
def test_patch_merging_taken_apart_equals_timms(size):
    from mmvpt.models.backbones.prompted_swin import merge_patches
    merging = build(backbone='swin').double().swin.layers[1].downsample
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    seen = []

    def op(name, module, t):
        seen.append(name)
        return module(t)
    with torch.no_grad():
        torch.testing.assert_close(merge_patches(merging, x, op), merging(x), rtol=0, atol=1e-12)
    assert seen == ['merge_norm']


# DoRA's re-statement is Hugging Face peft's (test_dora.py)
@pytest.mark.parametrize('name', [n for n in ADAPTERS if n not in (*SWIN_ONLY, 'dora')])
def test_vit_equals_the_re_statement(name):
    model = randomised('vit', name)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = vit_reference(model, img)
        plain = build().double().eval()
        plain.vit.load_state_dict(model.vit.state_dict())
        assert not torch.allclose(plain(img)[0], expected, atol=1e-3)  # the method matters
        torch.testing.assert_close(model(img)[0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('name', ['adaptformer', 'adapter_houlsby', 'adapter_pfeiffer'])
def test_swin_branches_equal_the_re_statement(name):
    model = randomised('swin', name)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(img)[0], swin_branch_reference(model, img), rtol=0,
                                   atol=1e-10)


@pytest.mark.parametrize('backbone, name', on_both(MERGEABLE))
def test_merged_weights_compute_the_method_in_a_plain_timm_model(backbone, name):
    model = randomised(backbone, name)
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        adapted = model(img)[0]
        frozen = {k: v.clone() for k, v in model.timm_model.state_dict().items()}
        model.merge_method()
        assert model.prompt is None
        changed = [k for k, v in model.timm_model.state_dict().items()
                   if k not in frozen or not torch.equal(frozen[k], v)]
        assert changed  # the weights took the method in
        torch.testing.assert_close(model(img)[0], adapted, rtol=0, atol=1e-10)
        # a plain timm model of the same arch loads the merged weights and computes the same
        timm_model = timm.create_model(model.arch, pretrained=False, num_classes=0, img_size=32,
                                       **model_arch_cfg(backbone)).double().eval()
        missing, unexpected = timm_model.load_state_dict(model.timm_model.state_dict(),
                                                         strict=False)
        assert not unexpected and all(k.endswith(('attn_mask', 'relative_position_index'))
                                      for k in missing)
        features = timm_model.forward_features(img)
        pooled = features[:, 0] if backbone == 'vit' else features.mean(dim=(1, 2))
        torch.testing.assert_close(pooled, adapted, rtol=0, atol=1e-10)


def test_a_vit_whose_patch_embedding_normalises_gets_swins_two_patch_operations():
    torch.manual_seed(0)
    model = build(dict(type='mmvpt.SSF'),
                  arch_cfg=vit_arch(embed_norm_layer='layernorm')).double().eval()
    assert model.prompt.ops[:2] == ('patch_proj', 'patch_embed')
    img = torch.randn(2, 3, 36, 36, dtype=torch.float64)  # padded to 40 by the embedding
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        adapted = model(img)[0]
        unscaled = copy.deepcopy(model)
        unscaled.prompt.scale_patch_proj.fill_(1)
        unscaled.prompt.shift_patch_proj.zero_()
        # the projection's pair matters
        assert not torch.allclose(unscaled(img)[0], adapted, atol=1e-3)
        # folded into the conv and the norm, timm's own PatchEmbed computes the same
        torch.testing.assert_close(model.merge_method()(img)[0], adapted, rtol=0, atol=1e-10)


def model_arch_cfg(backbone):
    return dict(BACKBONES[backbone][1]['arch_cfg'])


@pytest.mark.parametrize('name', ['adaptformer', 'adapter_houlsby'])
def test_bottleneck_adapters_refuse_to_merge_and_say_why(name):
    model = randomised('vit', name)
    with pytest.raises(NotImplementedError, match='cannot be merged.*non-linearity'):
        model.merge_method()
    assert model.prompt is not None
    with pytest.raises(NotImplementedError, match='CVPT adds tokens, keys or a cross-attention'):
        build(dict(type='mmvpt.CVPT', num_tokens=2)).merge_method()


@pytest.mark.parametrize('backbone, name', on_both(ADAPTERS))
def test_only_the_method_trains_and_starts_as_the_frozen_model(backbone, name):
    torch.manual_seed(0)
    model = build(ADAPTERS[name], backbone=backbone).train()
    plain = build(backbone=backbone).eval()
    plain.timm_model.load_state_dict(model.timm_model.state_dict())
    img = torch.randn(2, 3, 32, 32)
    if name not in ('ssf', ):  # zero updates, zero biases, zero up-projections at the start
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(img)[0], plain(img)[0], rtol=0, atol=1e-6)
    model.train()
    model(img)[0].pow(2).sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in model.prompt.named_parameters(prefix='prompt')}
    # behind a zero B / up-projection, A / the down-projection get no gradient yet
    assert all(model.prompt.get_parameter(n[len('prompt.'):]).grad.abs().sum() > 0 for n in trained
               if 'lora_a' not in n and 'down' not in n)


@pytest.mark.parametrize('backbone, name',
                         [('vit', 'bitfit'), ('swin', 'bitfit'), ('swin', 'bitfit_tables')])
def test_bitfit_trains_exactly_the_biases_of_the_model(backbone, name):
    torch.manual_seed(0)
    model = build(ADAPTERS[name], backbone=backbone).double()
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    reference = timm.create_model(model.arch, pretrained=False, num_classes=0, img_size=32,
                                  drop_path_rate=0., **model_arch_cfg(backbone)).double()
    reference.load_state_dict(model.timm_model.state_dict())
    # BitFit's bias terms; with position_bias, VPT's rule: every tensor named *bias*
    biases = {n: p for n, p in reference.named_parameters()
              if n.endswith('.bias') or (model.prompt.position_bias and 'bias' in n)}
    reference.requires_grad_(False)
    for p in biases.values():
        p.requires_grad_(True)
    model(img)[0].pow(2).sum().backward()
    features = reference.forward_features(img)
    (features[:, 0] if backbone == 'vit' else features.mean(dim=(1, 2))).pow(2).sum().backward()
    # each tuned change against the gradient of the bias it changes, found by identity
    m, names = model.prompt, {id(p): n for n, p in model.timm_model.named_parameters()}
    matched = set()
    for op in m.ops:
        for layer in m.op_layers(op):
            name = names[id(last_affine(op_module(model, layer, op)).bias)]
            torch.testing.assert_close(bias_grad(m, op, layer), biases[name].grad, rtol=0,
                                       atol=1e-10)
            matched.add(name)
    for layer in range(m.num_layers) if m.position_bias else ():
        name = names[id(model.blocks[layer].attn.relative_position_bias_table)]
        torch.testing.assert_close(bias_grad(m, 'position', layer), biases[name].grad, rtol=0,
                                   atol=1e-10)
        matched.add(name)
    assert matched == set(biases)  # every bias, once
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in biases.values())


def bias_grad(method, op, layer):
    """The gradient of BitFit's change of ``op``'s bias at ``layer``."""
    param = getattr(method, f'bias_{op}')
    if op == 'merge_norm':
        return param[[first for first, _ in method.patch_mergings].index(layer)].grad
    if layer is None:
        return param.grad
    return method.layer_of([p.grad for p in param] if isinstance(param, torch.nn.ParameterList)
                           else param.grad, layer)


def test_tuned_parameter_counts_on_vit_b():
    def count(prompt):
        with torch.device('meta'):
            model = PromptedViT(arch='vit_base_patch16_224', prompt=prompt)
        return sum(p.numel() for p in model.prompt.parameters())
    assert count(dict(type='mmvpt.LoRA')) == 12 * 2 * 2 * 8 * 768  # rank 8 on q and v
    assert count(dict(type='mmvpt.BitFit')) == 102_912  # every bias of ViT-B
    assert count(dict(type='mmvpt.SSF')) == 205_824  # SSF's 0.21 M
    assert count(dict(type='mmvpt.AdaptFormer')) == 12 * (2 * 64 * 768 + 64 + 768)
    assert count(dict(type='mmvpt.Adapter', bottleneck=8)) == 12 * 2 * (2 * 8 * 768 + 8 + 768)


def test_tuned_parameter_counts_on_swin_b():
    with torch.device('meta'):
        def count(prompt):
            model = PromptedSwin(arch='swin_base_patch4_window7_224', prompt=prompt)
            return sum(p.numel() for p in model.prompt.parameters())
        swin = timm.create_model('swin_base_patch4_window7_224', num_classes=0)
    widths, depths = (128, 256, 512, 1024), (2, 2, 18, 2)
    # SSF's Swin: a scale and a shift after the patch projection and the embedding's norm,
    # per block norm1, qkv (3C), proj, norm2, fc1 (4C), fc2, per patch merging its norm (4C),
    # and the final norm
    blocks = sum(depth * 2 * (C + 3 * C + C + C + 4 * C + C) for C, depth in zip(widths, depths))
    assert count(dict(type='mmvpt.SSF')) == (
        2 * 2 * 128 + blocks + sum(2 * 4 * C for C in widths[:3]) + 2 * 1024)
    assert count(dict(type='mmvpt.BitFit')) == sum(
        p.numel() for n, p in swin.named_parameters() if n.endswith('.bias'))
    # VPT's Swin "Bias": every tensor named *bias*, the relative-position tables too
    assert count(dict(type='mmvpt.BitFit', position_bias=True)) == sum(
        p.numel() for n, p in swin.named_parameters() if 'bias' in n)


def test_bitfit_position_bias_on_a_vit_says_it_has_no_tables():
    with pytest.raises(ValueError, match='position_bias=True: this backbone has no '
                                         'relative-position bias tables'):
        build(dict(type='mmvpt.BitFit', position_bias=True))


@pytest.mark.parametrize('backbone, name', on_both(['lora_qv', 'dora', 'ssf', 'bitfit',
                                                    'bitfit_tables', 'adaptformer',
                                                    'adapter_houlsby']))
def test_stacked_tasks_give_each_sample_its_own_tasks_output(backbone, name):
    models = [randomised(backbone, name, seed) for seed in range(3)]
    for other in models[1:]:
        other.timm_model.load_state_dict(models[0].timm_model.state_dict())
    img = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        own = [m(img)[0] for m in models]
        served = models[0]
        served.prompt = served.prompt.stacked(
            {f't{i}': m.prompt.state_dict() for i, m in enumerate(models)})
        tasks = torch.tensor([2, 0, 1, 1, 2])
        mixed = served(img, tasks=tasks)[0]
    for row, task in enumerate(tasks.tolist()):
        torch.testing.assert_close(mixed[row], own[task][row], rtol=0, atol=1e-10)


def test_lora_equals_peft_on_the_same_timm_vit():
    torch.manual_seed(0)
    model = build(dict(type='mmvpt.LoRA', rank=2, alpha=6, targets=('qkv', 'proj', 'fc1', 'fc2')))
    model = model.double().eval()
    peft_model = peft_twin(model)
    m = model.prompt
    with torch.no_grad():
        for (layer, target), (linear, rows, ranks) in peft_blocks(m, peft_model).items():
            a, b = torch.randn_like(tensor(m, f'lora_a_{target}', layer)), torch.randn_like(
                tensor(m, f'lora_b_{target}', layer))
            getattr(m, f'lora_a_{target}')[layer].copy_(a)
            getattr(m, f'lora_b_{target}')[layer].copy_(b)
            linear.lora_A['default'].weight[ranks].copy_(a)
            linear.lora_B['default'].weight[rows, ranks].copy_(b)
    peft_model.eval()
    img = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = peft_model.base_model.model.forward_features(img)[:, 0]
        assert not torch.allclose(expected, model.vit.forward_features(img)[:, 0], atol=1e-3)
        torch.testing.assert_close(model(img)[0], expected, rtol=0, atol=1e-10)
    # the same trainable tensors, element for element
    assert sum(p.numel() for p in m.parameters()) == sum(
        p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
