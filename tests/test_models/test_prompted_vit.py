"""PromptedViT: outputs, frozen weights, parameter counts on real ViT-B/16 shapes,
checkpoint formats and errors."""
import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict

from mmvpt.models import PromptedViT
from mmvpt.models.utils import CheckpointMismatchError
from mmvpt.registry import MODELS
from mmvpt.utils import parameter_report

from tests.helpers.tiny_models import TINY_VIT, vit_spec

METHODS = {
    'vpt': dict(type='mmvpt.VPT', num_tokens=4),
    'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4),
    'cvpt': dict(type='mmvpt.CVPT', num_tokens=4),
    'ivpt': dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=2),
}


# -- parameter counts on ViT-B/16 -------------------------------------------------------
@pytest.fixture(scope='module')
def vit_b_counts():
    counts = {}
    for name, prompt in {
            'none': None,
            'vpt': dict(type='mmvpt.VPT', num_tokens=10),
            'vpt_shallow': dict(type='mmvpt.VPT', num_tokens=10, deep=False),
            'cvpt': dict(type='mmvpt.CVPT', num_tokens=10),
            'cvpt_learnable_ca': dict(type='mmvpt.CVPT', num_tokens=10, ca_trainable=True),
            'e2vpt': dict(type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5),
            'e2vpt_separate_kv': dict(type='mmvpt.E2VPT', num_tokens=10, num_kv_tokens=5,
                                      share_kv=False),
            'ivpt': dict(type='mmvpt.IVPT', num_tokens=10, num_ar_tokens=10),
    }.items():
        model = PromptedViT(arch='vit_base_patch16_224', prompt=prompt)
        counts[name] = parameter_report(model)
    return counts


def test_vit_b_parameter_counts(vit_b_counts):
    backbone = 85_798_656  # timm ViT-B/16 without head
    assert vit_b_counts['none'] == dict(total=backbone, tuned=0, tuned_percent=0.,
                                        tuned_without_head=0)
    tuned = {name: r['tuned'] for name, r in vit_b_counts.items()}
    assert tuned['vpt'] == 92_160
    assert tuned['vpt_shallow'] == 7_680
    assert tuned['cvpt'] == 92_160  # shared, frozen cross-attention: nothing extra
    assert tuned['cvpt_learnable_ca'] == 92_160 + 12 * (768 * 2304 + 2304 + 768 * 768 + 768)
    assert tuned['e2vpt'] == 92_160 + 46_080
    assert tuned['e2vpt_separate_kv'] == 92_160 + 2 * 46_080
    assert tuned['ivpt'] == 92_160 + 1_100 + 84_480
    for name, report in vit_b_counts.items():
        assert report['total'] == backbone + report['tuned'] or name == 'none'
        assert report['tuned_percent'] == pytest.approx(100 * report['tuned'] / report['total'])


# -- frozen backbone: gradients only where tuned ----------------------------------------
@pytest.mark.parametrize('method', sorted(METHODS))
def test_backward_reaches_only_prompts_and_head(method):
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ImageClassifier
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # whatever scope another test left
        model = ImageClassifier(
            backbone=dict(type='mmvpt.PromptedViT', prompt=METHODS[method], **TINY_VIT),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=32))
    model.train()
    inputs = torch.randn(2, 3, 32, 32)
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(i) for i in (0, 2)]
    loss = model.loss(inputs, samples)['loss']
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert {n for n in with_grad if n.startswith('head.')} == {'head.fc.weight', 'head.fc.bias'}
    prompt_params = {n for n, _ in model.named_parameters() if n.startswith('backbone.prompt.')}
    assert with_grad - {'head.fc.weight', 'head.fc.bias'} == prompt_params
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
    assert not any(p.requires_grad for p in model.backbone.vit.parameters())


def test_full_finetuning_and_linear_probing():
    full = PromptedViT(prompt=None, frozen=False, **TINY_VIT)
    probe = PromptedViT(prompt=None, **TINY_VIT)
    assert all(p.requires_grad for p in full.parameters())
    assert not any(p.requires_grad for p in probe.parameters())


# -- outputs ----------------------------------------------------------------------------
@pytest.mark.parametrize('method', sorted(METHODS))
def test_feature_maps_strip_prompts_at_any_size(method):
    prompt = dict(METHODS[method])
    if method == 'ivpt':
        prompt['num_ar_tokens'] = 0  # no AR for segmentation
    model = PromptedViT(prompt=prompt, out_type='featmap', out_indices=(0, 2), **TINY_VIT).eval()
    for size in ((32, 32), (48, 64)):
        outs = model(torch.randn(2, 3, *size))
        assert [tuple(o.shape) for o in outs] == [(2, 32, size[0] // 8, size[1] // 8)] * 2


@pytest.mark.parametrize('method', sorted(METHODS))
def test_sizes_off_the_patch_grid_are_padded_like_mmseg(method):
    """A slide-inference crop of an extreme aspect ratio (e.g. 57 px) is zero-padded at the
    bottom/right to the patch grid, as mmseg's ViT pads it (padding='corner')."""
    prompt = dict(METHODS[method])
    if method == 'ivpt':
        prompt['num_ar_tokens'] = 0
    model = PromptedViT(prompt=prompt, out_type='featmap', **TINY_VIT).eval()
    torch.manual_seed(0)
    image = torch.randn(2, 3, 37, 57)
    padded = torch.nn.functional.pad(image, (0, 64 - 57, 0, 40 - 37))
    with torch.no_grad():
        out, = model(image)
        expected, = model(padded)
    assert out.shape == (2, 32, 5, 8)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_average_pooling_excludes_prompts():
    model = PromptedViT(prompt=dict(type='mmvpt.VPT', num_tokens=3), out_type='avg_featmap',
                        **TINY_VIT).eval()
    img = torch.randn(1, 3, 32, 32)
    featmap = PromptedViT(prompt=dict(type='mmvpt.VPT', num_tokens=3), out_type='featmap',
                          **TINY_VIT)
    featmap.load_state_dict(model.state_dict())
    (avg, ), (fmap, ) = model(img), featmap.eval()(img)
    torch.testing.assert_close(avg, fmap.flatten(2).mean(-1))


def test_ivpt_switches_attentive_reinforcement_off_without_cls_token():
    model = PromptedViT(**vit_spec(class_token=False, global_pool='avg'), out_type='avg_featmap',
                        prompt=dict(type='mmvpt.IVPT', num_tokens=4, num_ar_tokens=2))
    assert model.prompt.ar_prompts is None and not model.prompt.wants_cls_attention(0)
    assert model(torch.randn(2, 3, 32, 32))[0].shape == (2, 32)


def test_builds_from_host_registries_with_scoped_type():
    from mmpretrain.registry import MODELS as PRETRAIN
    from mmseg.registry import MODELS as SEG
    cfg = dict(type='mmvpt.PromptedViT', prompt=dict(type='mmvpt.CVPT', num_tokens=2), **TINY_VIT)
    for registry in (PRETRAIN, SEG):
        model = registry.build(ConfigDict(cfg))
        assert isinstance(model, PromptedViT) and model.prompt.num_tokens == 2


@pytest.mark.parametrize('arch,depth,width', [('vit_large_patch16_384', 24, 1024),
                                              ('vit_huge_patch14_224', 32, 1280)])
def test_larger_archs_build_on_meta_device(arch, depth, width):
    with torch.device('meta'):
        model = PromptedViT(arch=arch, img_size=512 if 'large' in arch else 224,
                            prompt=dict(type='mmvpt.CVPT', num_tokens=200))
    assert model.num_layers == depth and model.embed_dims == width
    assert model.prompt.prompts.shape == (depth, 200, width)


# -- bad config values -------------------------------------------------------------------
@pytest.mark.parametrize('prompt,match', [
    (dict(type='mmvpt.CVPT', insert=6), 'insert=6'),
    (dict(type='mmvpt.CVPT', insert='after'), "insert='after'"),
    (dict(type='mmvpt.CVPT', ca_init='copy'), "ca_init='copy'"),
    (dict(type='mmvpt.VPT', num_tokens=0), 'num_tokens=0'),
    (dict(type='mmvpt.VPT', dropout=1.5), 'dropout=1.5'),
    (dict(type='mmvpt.VPT', dropout_mode='token'), "dropout_mode='token'"),
    (dict(type='mmvpt.E2VPT', prune_mode='zero'), "prune_mode='zero'"),
    (dict(type='mmvpt.E2VPT', num_segments=5), 'num_segments=5'),
    (dict(type='mmvpt.IVPT', da_init='eye'), "da_init='eye'"),
])
def test_bad_method_options_name_themselves(prompt, match):
    with pytest.raises(ValueError, match=match):
        PromptedViT(prompt=prompt, **TINY_VIT)


def test_bad_backbone_options_name_themselves():
    with pytest.raises(ValueError, match="arch='vit_nope'"):
        PromptedViT(arch='vit_nope')
    with pytest.raises(ValueError, match="out_type='pooled'"):
        PromptedViT(out_type='pooled', **TINY_VIT)
    with pytest.raises(ValueError, match='out_indices'):
        PromptedViT(out_indices=(0, 7), **TINY_VIT)


# -- pretrained checkpoints ----------------------------------------------------------------
def random_vit(img_size=32, seed=0):
    torch.manual_seed(seed)
    model = PromptedViT(**vit_spec(img_size))
    with torch.no_grad():
        for p in model.vit.parameters():
            p.normal_(0, 0.02)
    return model


def assert_same_weights(model, reference):
    expected = reference.vit.state_dict()
    for name, value in model.vit.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def load(path, img_size=32, prompt=None):
    model = PromptedViT(**vit_spec(img_size), prompt=prompt,
                        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    return model


def save_google_npz(vit, path):
    """The Google ViT .npz layout (as in ViT-B_16.npz), from a timm ViT."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    D = vit.embed_dim
    H = vit.blocks[0].attn.num_heads
    w = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'],
         'cls': sd['cls_token'],
         'Transformer/posembed_input/pos_embedding': sd['pos_embed'],
         'Transformer/encoder_norm/scale': sd['norm.weight'],
         'Transformer/encoder_norm/bias': sd['norm.bias'],
         'head/kernel': np.zeros((D, 5), np.float32), 'head/bias': np.zeros(5, np.float32)}
    for i in range(len(vit.blocks)):
        p, b = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
        mha = p + 'MultiHeadDotProductAttention_1/'
        qkv_w, qkv_b = sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias']
        for j, n in enumerate(('query', 'key', 'value')):
            w[mha + n + '/kernel'] = qkv_w[j * D:(j + 1) * D].T.reshape(D, H, D // H)
            w[mha + n + '/bias'] = qkv_b[j * D:(j + 1) * D].reshape(H, D // H)
        w[mha + 'out/kernel'] = sd[b + 'attn.proj.weight'].T.reshape(H, D // H, D)
        w[mha + 'out/bias'] = sd[b + 'attn.proj.bias']
        for ln, norm in (('LayerNorm_0', 'norm1'), ('LayerNorm_2', 'norm2')):
            w[p + ln + '/scale'] = sd[b + norm + '.weight']
            w[p + ln + '/bias'] = sd[b + norm + '.bias']
        for r in range(2):
            w[p + f'MlpBlock_3/Dense_{r}/kernel'] = sd[b + f'mlp.fc{r + 1}.weight'].T
            w[p + f'MlpBlock_3/Dense_{r}/bias'] = sd[b + f'mlp.fc{r + 1}.bias']
    np.savez(path, **w)


def test_loads_timm_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    source = random_vit()
    torch.save(source.vit.state_dict(), tmp_path / 'timm.pth')
    save_file(source.vit.state_dict(), str(tmp_path / 'timm.safetensors'))
    for name in ('timm.pth', 'timm.safetensors'):
        assert_same_weights(load(tmp_path / name), source)


def test_loads_google_npz(tmp_path):
    source = random_vit()
    save_google_npz(source.vit, tmp_path / 'ViT-tiny.npz')
    model = load(tmp_path / 'ViT-tiny.npz', prompt=METHODS['cvpt'])
    assert_same_weights(model, source)
    img = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.vit.forward_features(img), source.vit.forward_features(img))


def test_loads_mae_and_moco_v3(tmp_path):
    source = random_vit()
    state = source.vit.state_dict()
    mae = dict(model={**state, 'mask_token': torch.zeros(1, 1, 32),
                      'decoder_embed.weight': torch.zeros(16, 32),
                      'decoder_pos_embed': torch.zeros(1, 17, 16)}, epoch=799)
    torch.save(mae, tmp_path / 'mae_pretrain.pth')
    moco = dict(state_dict={**{f'module.base_encoder.{k}': v for k, v in state.items()},
                            **{f'module.momentum_encoder.{k}': v + 1 for k, v in state.items()},
                            'module.base_encoder.head.0.weight': torch.zeros(4, 32),
                            'module.predictor.0.weight': torch.zeros(4, 4)}, arch='vit_base')
    torch.save(moco, tmp_path / 'moco_v3.pth.tar')
    for name in ('mae_pretrain.pth', 'moco_v3.pth.tar'):
        assert_same_weights(load(tmp_path / name), source)


def test_pos_embed_is_resized_to_the_image_size(tmp_path):
    from timm.layers import resample_abs_pos_embed
    source = random_vit(img_size=32)
    torch.save(source.vit.state_dict(), tmp_path / 'small.pth')
    save_google_npz(source.vit, tmp_path / 'small.npz')
    for name in ('small.pth', 'small.npz'):
        model = load(tmp_path / name, img_size=48)
        assert model.vit.pos_embed.shape == (1, 1 + 36, 32)
        expected = resample_abs_pos_embed(source.vit.pos_embed, new_size=(6, 6),
                                          num_prefix_tokens=1,
                                          interpolation=('bilinear' if name.endswith('npz')
                                                         else 'bicubic'),
                                          antialias=not name.endswith('npz'))
        torch.testing.assert_close(model.vit.pos_embed, expected)


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path):
    other = PromptedViT(**vit_spec(embed_dim=48, depth=2))
    torch.save(other.vit.state_dict(), tmp_path / 'wide.pth')
    with pytest.raises(CheckpointMismatchError) as err:
        load(tmp_path / 'wide.pth')
    message = str(err.value)
    assert 'wide.pth' in message
    assert 'blocks.0.attn.qkv.weight: checkpoint (144, 48) vs model (96, 32)' in message
    assert 'missing keys: blocks.2.' in message
    save_google_npz(other.vit, tmp_path / 'wide.npz')
    with pytest.raises(CheckpointMismatchError, match='width 48 and depth 2'):
        load(tmp_path / 'wide.npz')
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        load(tmp_path / 'nothing.pth')


def test_method_types_are_registered():
    for name in ('PromptedViT', 'VPT', 'E2VPT', 'CVPT', 'IVPT'):
        assert MODELS.get(name) is not None
