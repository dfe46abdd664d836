"""mmvpt.analysis.attention, and tools/analysis/attention_share.py and visualize_attention.py
over it, on tiny ViTs: the shares, CVPT's CA/SA ratio and entropy against a plain
re-statement with explicit loops, the files a user gets, and the no-prompt run being the
frozen backbone itself."""
import math
import os
import os.path as osp
from collections import defaultdict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from PIL import Image

from mmvpt.analysis import attention
from mmvpt.models import PromptedSwin, PromptedViT
from mmvpt.models.utils import probe_attention
from mmvpt.testing import write_random_vit
from mmvpt.utils.tuned_checkpoint import load_tuned_checkpoint, save_tuned_checkpoint

from tests.conftest import DEMO_CONFIG, run_tool
from tests.helpers.tiny_models import DEMO_ARCH, TINY_SWIN, model_from_config

NUM_IMAGES = 6
GROUPS = ('cls', 'image', 'all')
SHARES = ('share_prompt', 'share_kv', 'share_prefix', 'share_image')


# -- a plain re-statement: explicit loops over images, heads and queries, float64 ------------
def layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()


def softmax(scores):
    e = torch.exp(scores - scores.max())
    return e / e.sum()


def linear(x, layer):
    return x @ layer.weight.double().T + layer.bias.double()


def reference_statistics(backbone, images):
    """{(block, query group): {statistic: mean over images}} of a PromptedViT with no
    method, VPT (deep or shallow), E2VPT (visual + KV prompts, before or after) or CVPT
    (insert 3), restated from the block weights and the prompt tensors."""
    vit, method = backbone.vit, backbone.prompt
    kind = type(method).__name__ if method is not None else None
    tokens = backbone.embed(images)[0].detach().double()  # patch + position embedding
    per_image = defaultdict(lambda: defaultdict(list))
    for b in range(images.shape[0]):
        x = tokens[b]
        carried = 0
        num_image = x.shape[0] - 1
        for layer, blk in enumerate(vit.blocks):
            C, H = x.shape[1], blk.attn.num_heads
            d = C // H
            wq, wk, wv = blk.attn.qkv.weight.double().split(C)
            bq, bk, bv = blk.attn.qkv.bias.double().split(C)
            visual = kv = None
            if kind == 'VPT' and not method.deep and layer == 0:
                carried = method.num_tokens
                x = torch.cat([x[:1], method.prompts[0].detach().double(), x[1:]])
            elif (kind == 'VPT' and method.deep) or (kind == 'E2VPT' and method.num_tokens):
                visual = method.prompts[layer].detach().double()
            if kind == 'E2VPT' and method.num_kv_tokens:
                kv = method.kv_prompts[layer].detach().double()  # (H, L_kv, d), keys = values
            h = layer_norm(x, blk.norm1)
            q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
            if visual is not None:
                hp = layer_norm(visual, blk.norm1)
                kp, vp = hp @ wk.T + bk, hp @ wv.T + bv
            N = x.shape[0]
            heads_out = torch.zeros(N, C, dtype=torch.float64)
            shares = torch.zeros(N, H, 4, dtype=torch.float64)  # prompt, kv, prefix, image
            for n in range(N):
                for hh in range(H):
                    cols = slice(hh * d, (hh + 1) * d)
                    parts = [q[n, cols] @ k[:, cols].T / math.sqrt(d)]
                    if visual is not None:
                        parts.append(q[n, cols] @ kp[:, cols].T / math.sqrt(d))
                    if kv is not None:
                        parts.append(q[n, cols] @ kv[hh].T / math.sqrt(d))
                    p = softmax(torch.cat(parts))
                    p_tok = p[:N]
                    p_vis = p[N:N + visual.shape[0]] if visual is not None else p[:0]
                    p_kv = p[N + len(p_vis):]
                    shares[n, hh] = torch.stack([p_vis.sum() + p_tok[1:1 + carried].sum(),
                                                 p_kv.sum(), p_tok[0],
                                                 p_tok[1 + carried:].sum()])
                    out = p_tok @ v[:, cols]
                    if visual is not None:
                        out = out + p_vis @ vp[:, cols]
                    if kv is not None:
                        out = out + p_kv @ kv[hh]
                    heads_out[n, cols] = out
            sa = linear(heads_out, blk.attn.proj)
            queries = dict(cls=slice(0, 1), image=slice(N - num_image, N), all=slice(0, N))
            stats = {g: dict(zip(SHARES, shares[s].mean((0, 1)).tolist()))
                     for g, s in queries.items()}
            x = x + sa
            if kind == 'CVPT':
                prompts = method.prompts[layer].detach().double()
                qc, kc, vc = x @ wq.T + bq, prompts @ wk.T + bk, prompts @ wv.T + bv
                ca_heads = torch.zeros(N, C, dtype=torch.float64)
                entropy = torch.zeros(N, H, dtype=torch.float64)
                for n in range(N):
                    for hh in range(H):
                        cols = slice(hh * d, (hh + 1) * d)
                        p = softmax(qc[n, cols] @ kc[:, cols].T / math.sqrt(d))
                        entropy[n, hh] = -(p * torch.log(p)).sum()
                        ca_heads[n, cols] = p @ vc[:, cols]
                ca = linear(ca_heads, blk.attn.proj)
                for g, s in queries.items():
                    stats[g]['ca_sa_ratio'] = (ca[s].norm() / sa[s].norm()).item()
                    stats[g]['ca_entropy'] = entropy[s].mean().item()
                x = x + ca
            hidden = linear(layer_norm(x, blk.norm2), blk.mlp.fc1)
            x = x + linear(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))), blk.mlp.fc2)
            for g, values in stats.items():
                for name, value in values.items():
                    per_image[(layer, g)][name].append(value)
    return {key: {name: sum(v) / len(v) for name, v in values.items()}
            for key, values in per_image.items()}


def assert_matches_reference(rows, reference, cvpt):
    assert {(r['block'], r['query_group']) for r in rows} == set(reference)
    for row in rows:
        expected = reference[(row['block'], row['query_group'])]
        names = SHARES + (('ca_sa_ratio', 'ca_entropy') if cvpt else ())
        for name in names:
            assert row[name] == pytest.approx(expected[name], abs=1e-5), \
                (row.get('model'), row['block'], row['query_group'], name)
        if not cvpt:
            assert row['ca_sa_ratio'] is None and row['ca_entropy'] is None


# -- models, checkpoints, images -------------------------------------------------------------
@pytest.fixture(scope='module')
def sharp_backbone(tmp_path_factory):
    """The demo's tiny random ViT with 8x larger qkv weights and a random CLS token: random
    timm init gives near-uniform attention, under which a wrong grouping of keys or queries
    could pass unnoticed."""
    path = tmp_path_factory.mktemp('sharp') / 'vit_tiny_sharp.pth'
    write_random_vit(path, img_size=32, seed=1, **DEMO_ARCH)
    state = torch.load(path)
    generator = torch.Generator().manual_seed(0)
    for key in state:
        if key.endswith('attn.qkv.weight'):
            state[key] = state[key] * 8
    state['cls_token'] = torch.randn(state['cls_token'].shape, generator=generator)
    torch.save(state, path)
    return str(path)


def randomise_prompts(model, seed):
    generator = torch.Generator().manual_seed(seed)
    method = getattr(model, 'backbone', model).prompt
    with torch.no_grad():
        for p in ([] if method is None else method.parameters()):
            p.copy_(torch.randn(p.shape, generator=generator))
    return model


def tiny_backbone(pretrained, prompt, seed=0):
    backbone = PromptedViT(arch='vit_base_patch16_224', img_size=32, arch_cfg=DEMO_ARCH,
                           prompt=prompt, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
    backbone.init_weights()
    return randomise_prompts(backbone, seed).eval()


def write_config(path, prompt, pretrained, task_dir):
    path.write_text(
        f'_base_ = [{DEMO_CONFIG!r}]\n'
        f'model = dict(backbone=dict(frozen=True, prompt={prompt!r}, '
        f'init_cfg=dict(type="Pretrained", checkpoint={pretrained!r})))\n'
        + ''.join(f'{split}_dataloader = dict(dataset=dict(data_root={task_dir!r}))\n'
                  for split in ('train', 'val', 'test')))
    return str(path)


MODELS_UNDER_TEST = {
    # name: (prompt, tuned-only checkpoint, label given on the command line)
    'vpt': (dict(type='mmvpt.VPT', num_tokens=4), False, None),
    'e2vpt': (dict(type='mmvpt.E2VPT', num_tokens=3, num_kv_tokens=2, num_segments=4), False, None),
    'cvpt': (dict(type='mmvpt.CVPT', num_tokens=4), True, None),  # folded cross-attention
    'cvpt_wide': (dict(type='mmvpt.CVPT', num_tokens=24), True, 'CVPT wide'),  # unfolded
    'linear': (None, True, None),
    'ivpt': (dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=2), False, None),
}


@pytest.fixture(scope='module')
def tuned(tmp_path_factory, tiny_vtab, sharp_backbone):
    """{name: (config, checkpoint, model)}: each model tuned by randomising its prompts,
    saved whole or tuned-only as TunedCheckpointHook would."""
    tmp = tmp_path_factory.mktemp('attention_models')
    out = {}
    for seed, (name, (prompt, tuned_only, _)) in enumerate(MODELS_UNDER_TEST.items()):
        config = write_config(tmp / f'{name}.py', prompt, sharp_backbone, tiny_vtab)
        model = model_from_config(config)
        model.init_weights()
        randomise_prompts(model, seed).eval()
        checkpoint = str(tmp / f'{name}.pth')
        if tuned_only:
            save_tuned_checkpoint(checkpoint, model)
            assert not any(k.startswith('backbone.vit.')
                           for k in load_tuned_checkpoint(checkpoint)[0])
        else:
            torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
        out[name] = (config, checkpoint, model)
    return out


def val_images(model, config, task_dir, count=NUM_IMAGES):
    """The first ``count`` images of val200.txt through the config's pipeline and the
    model's data preprocessor, read here without the tool's dataset route."""
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    with open(osp.join(task_dir, 'val200.txt')) as f:
        paths = [osp.join(task_dir, line.split()[0]) for line in f][:count]
    pipeline = Compose(cfg.val_dataloader.dataset.pipeline)
    with torch.no_grad():
        return model.data_preprocessor(pseudo_collate([pipeline(dict(img_path=p)) for p in paths]),
                                       False)['inputs'], paths


def assert_png(path, size):
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == size


# -- attention_share.py ----------------------------------------------------------------------
@pytest.mark.tools
def test_attention_share_tool_equals_the_plain_restatement(tuned, tiny_vtab, tmp_path):
    names = ['vpt', 'e2vpt', 'cvpt', 'cvpt_wide', 'linear']
    config, checkpoint, _ = tuned['vpt']
    compare = [':'.join(tuned[n][:2])
               + (f':{MODELS_UNDER_TEST[n][2]}' if MODELS_UNDER_TEST[n][2] else '')
               for n in names[1:]]
    out = tmp_path / 'share'
    # two batches of 4 + 2 images: the means are over images, not batches
    proc = run_tool('analysis/attention_share.py', config, checkpoint, '--compare', *compare,
                    '--num-images', str(NUM_IMAGES), '--batch-size', '4', '--out', str(out),
                    '--device', 'cpu')
    assert 'CLS->prompts' in proc.stdout and 'H(CA) (log P = 1.386)' in proc.stdout
    rows = attention.read_share_csv(out / 'attention_share.csv')
    labels = ['VPT-deep P=4', 'E2VPT P=3 KV=2', 'CVPT P=4', 'CVPT wide', 'Linear probing']
    models = attention.by_model(rows)
    assert list(models) == labels
    for name, label in zip(names, labels):
        model_rows = models[label]
        assert len(model_rows) == 4 * len(GROUPS)
        assert {r['num_images'] for r in model_rows} == {NUM_IMAGES}
        assert {r['checkpoint'] for r in model_rows} == {tuned[name][1]}
        for row in model_rows:
            assert sum(row[s] for s in SHARES) == pytest.approx(1, abs=1e-5)
            assert row['num_queries'] == {'cls': 1, 'image': 16, 'all': 17}[row['query_group']]
        model = tuned[name][2]
        images, _ = val_images(model, tuned[name][0], tiny_vtab)
        reference = reference_statistics(model.backbone, images)
        assert_matches_reference(model_rows, reference, cvpt=name.startswith('cvpt'))
        if name in ('linear', 'cvpt', 'cvpt_wide'):  # no prompt enters the self-attention
            assert all(r['share_prompt'] == 0 and r['share_kv'] == 0 for r in model_rows)
        else:
            assert min(r['share_prompt'] for r in model_rows) > 1e-3
        if name.startswith('cvpt'):
            P = MODELS_UNDER_TEST[name][0]['num_tokens']
            assert all(r['log_num_prompts'] == pytest.approx(math.log(P)) for r in model_rows)
            assert all(0 < r['ca_entropy'] < math.log(P) for r in model_rows)
    assert min(r['share_kv'] for r in models['E2VPT P=3 KV=2']) > 1e-3
    # 2 x 2 panels of 5 x 3.5 inches at 100 dpi: the CVPT rows add the CA panels
    assert_png(out / 'attention_share.png', (1000, 700))


def test_measure_models_labels_and_rows(tuned, tmp_path):
    """The rows the tool writes, as data: every model's rows with its label, config and
    checkpoint; colliding default labels get the checkpoint's name, then a number."""
    config, checkpoint, _ = tuned['vpt']
    copy = str(tmp_path / 'other.pth')
    with open(checkpoint, 'rb') as f, open(copy, 'wb') as g:
        g.write(f.read())
    specs = [(config, checkpoint, None), (config, copy, None), (*tuned['linear'][:2], 'mine')]
    rows = attention.measure_models(specs, num_images=2, batch_size=2)
    models = attention.by_model(rows)
    assert list(models) == ['VPT-deep P=4 (vpt)', 'VPT-deep P=4 (other)', 'mine']
    assert {r['checkpoint'] for r in models['VPT-deep P=4 (other)']} == {copy}
    for label, model_rows in models.items():
        assert len(model_rows) == 4 * len(GROUPS)
        assert {r['num_images'] for r in model_rows} == {2}
    # the same model twice measures the same
    for a, b in zip(models['VPT-deep P=4 (vpt)'], models['VPT-deep P=4 (other)']):
        assert a['share_prompt'] == pytest.approx(b['share_prompt'], abs=1e-6)
    assert attention.unique_labels([('x', 'd', 'a.pth'), ('x', 'd', 'b.pth')]) == ['x', 'x #2']
    with pytest.raises(attention.AnalysisError,
                       match="checkpoint file '/nowhere.pth' does not exist"):
        attention.measure_models([(config, '/nowhere.pth', None)])
    # the CSV round trip
    attention.write_share_csv(rows, tmp_path / 'rows.csv')
    read = attention.read_share_csv(tmp_path / 'rows.csv')
    assert [(r['model'], r['block'], r['query_group']) for r in read] == [
        (r['model'], r['block'], r['query_group']) for r in rows]
    assert [r['share_image'] for r in read] == pytest.approx([r['share_image'] for r in rows])


@pytest.mark.parametrize('prompt', [
    None,
    dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=0),
    dict(type='mmvpt.VPT', num_tokens=3, deep=False),
    dict(type='mmvpt.E2VPT', num_tokens=2, num_kv_tokens=3, kv_location='after', num_segments=4),
    dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=2),
], ids=['no_method', 'e2vpt_P0', 'vpt_shallow', 'e2vpt_kv_after', 'e2vpt_kv_only'])
def test_compute_shares_in_process(prompt, sharp_backbone):
    backbone = tiny_backbone(sharp_backbone, prompt, seed=3)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = attention.compute_shares(backbone, [images[:2], images[2:]])
    assert len(rows) == 4 * len(GROUPS)
    for row in rows:
        assert sum(row[s] for s in SHARES) == pytest.approx(1, abs=1e-5)
    assert_matches_reference(rows, reference_statistics(backbone, images), cvpt=False)
    if prompt is None or not (prompt.get('num_tokens') or prompt.get('num_kv_tokens')):
        assert all(r['share_prompt'] == 0 and r['share_kv'] == 0 for r in rows)
        # P = 0 is the frozen backbone: the same shares as without a method
        plain = attention.compute_shares(tiny_backbone(sharp_backbone, None), [images])
        for row, expected in zip(rows, plain):
            for name in SHARES:
                assert row[name] == pytest.approx(expected[name], abs=1e-6)
    if prompt is not None and prompt.get('deep') is False:  # carried prompts are keys too
        assert {r['num_queries'] for r in rows if r['query_group'] == 'all'} == {1 + 3 + 16}
        assert min(r['share_prompt'] for r in rows) > 1e-3


def test_neutral_method_computes_the_plain_timm_blocks(sharp_backbone):
    backbone = tiny_backbone(sharp_backbone, None)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = []
    with torch.no_grad(), probe_attention(backbone, lambda kind, record: seen.append(kind)):
        plain = backbone(images)[0]
        assert seen == []  # prompt=None runs timm's own blocks: nothing to probe
        with attention.swap_prompt(backbone, attention.neutral_method(backbone)):
            neutral = backbone(images)[0]
    assert seen == ['self'] * 4
    assert backbone.prompt is None
    torch.testing.assert_close(neutral, plain, rtol=0, atol=1e-6)


def test_swin_is_refused_in_one_line():
    swin = PromptedSwin(**TINY_SWIN, prompt=dict(type='mmvpt.VPT', num_tokens=2))
    with pytest.raises(attention.AnalysisError,
                       match='^PromptedSwin: window attention shares are not supported'):
        attention.compute_shares(swin, [torch.zeros(1, 3, 32, 32)])


# -- visualize_attention.py ------------------------------------------------------------------
def test_prompted_and_frozen_maps(sharp_backbone):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    blocks = [0, 3]
    maps = {}
    for name in ('vpt', 'cvpt', 'linear'):
        backbone = tiny_backbone(sharp_backbone, MODELS_UNDER_TEST[name][0], seed=5)
        maps[name] = attention.attention_maps(backbone, images, blocks)
        assert maps[name]['grid'] == (4, 4) and maps[name]['reinforced'] == {}
        for kind in ('prompted', 'frozen'):
            for block in blocks:
                patch_map, share = maps[name][kind][block]
                assert patch_map.shape == (2, 4, 4)
                torch.testing.assert_close(patch_map.sum((1, 2)), torch.ones(2))
                assert ((0 < share) & (share <= 1 + 1e-6)).all()

    def close(a, b):
        return torch.allclose(a, b, rtol=0, atol=1e-6)

    for block in blocks:
        # the frozen run is the backbone without prompts, whatever the method
        for name in ('vpt', 'cvpt', 'linear'):
            for i in (0, 1):  # maps, shares
                assert close(maps[name]['frozen'][block][i], maps['linear']['prompted'][block][i])
        # VPT's prompt keys take a share of the CLS attention off the image in every block
        assert (maps['vpt']['prompted'][block][1] < maps['vpt']['frozen'][block][1] - 1e-3).all()
        assert not close(maps['vpt']['prompted'][block][0], maps['vpt']['frozen'][block][0])
    # CVPT (insert 3) adds its first cross-attention after block 0's self-attention
    for i in (0, 1):
        assert close(maps['cvpt']['prompted'][0][i], maps['cvpt']['frozen'][0][i])
    assert not close(maps['cvpt']['prompted'][3][0], maps['cvpt']['frozen'][3][0])


def test_ivpt_reinforces_the_tokens_the_cls_map_ranks_first(sharp_backbone):
    backbone = tiny_backbone(sharp_backbone, MODELS_UNDER_TEST['ivpt'][0], seed=6)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = attention.attention_maps(backbone, images, [0, 1, 2, 3])
    assert sorted(maps['reinforced']) == [0, 1, 2]  # AR after every block but the last
    for layer, indices in maps['reinforced'].items():
        ranked = maps['prompted'][layer][0].flatten(1).topk(2, dim=1).indices
        assert torch.equal(indices, ranked)


@pytest.mark.tools
def test_visualize_attention_tool_writes_one_png_per_image(tuned, tiny_vtab, tmp_path):
    with open(osp.join(tiny_vtab, 'test.txt')) as f:
        paths = [osp.join(tiny_vtab, line.split()[0]) for line in f][:2]
    config, checkpoint, _ = tuned['ivpt']
    out = tmp_path / 'ivpt'
    run_tool('analysis/visualize_attention.py', config, checkpoint, *paths, '--out', str(out),
             '--blocks', '-1', '1', '--device', 'cpu')
    # iVPT: four columns (input, with, without, AR) of 2.4 inches, a row per block, 100 dpi
    for path in paths:
        assert_png(out / (osp.splitext(osp.basename(path))[0] + '.png'), (960, 480))
    # a VPT model with the default block: three columns, one row; an image given twice
    # gets a numbered second name
    config, checkpoint, _ = tuned['vpt']
    proc = run_tool('analysis/visualize_attention.py', config, checkpoint, paths[0], paths[0],
                    '--out', str(tmp_path / 'vpt'), '--device', 'cpu')
    written = [line[len('wrote '):] for line in proc.stdout.splitlines()
               if line.startswith('wrote ')]
    assert [osp.basename(p) for p in written] == ['000000.png', '000000_2.png']
    assert sorted(os.listdir(tmp_path / 'vpt')) == ['000000.png', '000000_2.png']
    for path in written:
        assert_png(path, (720, 240))


def test_cls_maps_of_the_preprocessed_images(tuned, tiny_vtab):
    """preprocess_images feeds the maps what the config's test pipeline makes of a file."""
    from mmvpt.apis.inference import load_model, preprocess_images
    config, checkpoint, _ = tuned['vpt']
    with open(osp.join(tiny_vtab, 'test.txt')) as f:
        path = osp.join(tiny_vtab, f.readline().split()[0])
    model, cfg = load_model(config, checkpoint)
    (inputs, picture), = preprocess_images(cfg, model, [path])
    assert inputs.shape == (1, 3, 32, 32) and picture.shape == (32, 32, 3)
    np_image = np.asarray(Image.open(path).convert('RGB'))
    assert np.abs(picture.astype(int) - np_image.astype(int)).max() <= 1  # the un-normalised input
    blocks = attention.resolve_blocks([-1, 1], model.backbone.num_layers)
    assert blocks == [3, 1]
    maps = attention.attention_maps(model, inputs, blocks)
    assert sorted(maps['prompted']) == [1, 3] and maps['grid'] == (4, 4)
    with pytest.raises(attention.AnalysisError, match='--blocks 4: the backbone has 4 blocks'):
        attention.resolve_blocks([4], 4)
