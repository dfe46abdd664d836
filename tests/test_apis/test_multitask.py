"""mmvpt.apis.MultiTaskModel: several tasks' tuned-only checkpoints on one frozen backbone,
every sample with its own task; each sample's scores equal its own task's model."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint

import mmvpt.models.adapters.dora  # noqa: F401  until the package finds its methods itself
from mmvpt.apis import MultiTaskModel
from mmvpt.models.utils.vit_checkpoint import CheckpointMismatchError
from mmvpt.utils.tuned_checkpoint import save_tuned_checkpoint

from tests.conftest import DEMO_CONFIG, pretrained_line
from tests.helpers.tiny_models import SWIN, swin_arch

IMG = 32
SWIN_ARCH = swin_arch(patch_size=4)

METHODS = dict(
    vpt_deep=dict(type='mmvpt.VPT', num_tokens=3),
    vpt_shallow=dict(type='mmvpt.VPT', num_tokens=3, deep=False),
    e2vpt_remove=dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4),
    e2vpt_mask_after=dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
                          prune_mode='mask', kv_location='after', share_kv=False),
    cvpt=dict(type='mmvpt.CVPT', num_tokens=3),  # folded cross-attention
    cvpt_large=dict(type='mmvpt.CVPT', num_tokens=40),  # plain cross-attention
    ivpt=dict(type='mmvpt.IVPT', num_tokens=3, num_ar_tokens=2),
    lora=dict(type='mmvpt.LoRA', rank=2, targets=('q', 'v', 'fc2')),
    dora=dict(type='mmvpt.DoRA', rank=2, targets=('q', 'v', 'fc2')),
    ssf=dict(type='mmvpt.SSF'),
    bitfit=dict(type='mmvpt.BitFit'),
    adaptformer=dict(type='mmvpt.AdaptFormer', bottleneck=4, dropout=0.),
    adapter=dict(type='mmvpt.Adapter', bottleneck=4),
)
CLASS_COUNTS = (3, 5, 4)


def write_config(path, pretrained, prompt, num_classes, swin=False):
    """A task config on the demo's tiny ViT (or a tiny Swin), frozen, with ``prompt``."""
    backbone = dict(frozen=True, prompt=prompt)
    head = dict(num_classes=num_classes)
    if swin:
        backbone.update(_delete_=True, type='mmvpt.PromptedSwin', arch=SWIN,
                        img_size=IMG, arch_cfg=SWIN_ARCH)
        head.update(in_channels=32)
    path.write_text(f"_base_ = [{DEMO_CONFIG!r}]\n"
                    f"model = dict(backbone={backbone!r}, head={head!r})\n"
                    + pretrained_line(pretrained))
    return str(path)


def build(config):
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    return cfg, MODELS.build(cfg.model)


def train_task(config, out, seed, prune=None):
    """A few AdamW steps on random images (train mode: prompt dropout, drop-path), then a
    tuned-only checkpoint saved as mmvpt's TunedCheckpointHook saves it."""
    cfg, model = build(config)
    model.init_weights()
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05)
    model.train()
    for _ in range(3):
        images = torch.randn(4, 3, IMG, IMG)
        labels = torch.randint(0, cfg.model.head.num_classes, (4, ))
        loss = torch.nn.functional.cross_entropy(model.head(model.extract_feat(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if prune is not None:  # what the pruning hook leaves: masks set, per task
        method = model.backbone.prompt
        generator = torch.Generator().manual_seed(seed)
        for mask in (method.token_mask, method.segment_mask):
            prunable = mask[method.prunable_layers]
            prunable.copy_((torch.rand(prunable.shape, generator=generator) > prune).float())
    save_tuned_checkpoint(out, model, meta=dict(
        cfg=cfg.pretty_text,
        dataset_meta=dict(classes=[f'c{i}' for i in range(cfg.model.head.num_classes)])))
    return str(out)


def held_elements(module):
    """Elements of the distinct tensors a module holds (parameters and buffers)."""
    tensors = (*module.parameters(), *module.buffers())
    return sum({t.data_ptr(): t.numel() for t in tensors}.values())


def own_scores(config, checkpoint, images):
    """The task's own model, loaded the way tools/test.py's runner loads it."""
    _, model = build(config)
    load_checkpoint(model, checkpoint, map_location='cpu')
    model.eval()
    with torch.no_grad():
        return model.head(model.extract_feat(images))


def make_tasks(tmp_path, pretrained, method, swin=False):
    prompt = METHODS[method]
    prune = 0.4 if method.startswith('e2vpt') else None
    tasks = {}
    for index, num_classes in enumerate(CLASS_COUNTS):
        config = write_config(tmp_path / f'task{index}.py', pretrained, prompt, num_classes, swin)
        tasks[f'task{index}'] = (config, train_task(config, tmp_path / f'task{index}.pth', index,
                                                    prune))
    return tasks


@pytest.fixture(scope='module')
def tiny_swin(tmp_path_factory):
    import timm
    path = tmp_path_factory.mktemp('swin') / 'swin_tiny.pth'
    torch.manual_seed(0)
    model = timm.create_model(SWIN, pretrained=False, num_classes=0,
                              img_size=IMG, **SWIN_ARCH)
    torch.save(model.state_dict(), path)
    return str(path)


def check_mixed_batches(tasks, shared_config):
    model = MultiTaskModel(shared_config, {name: ckpt for name, (_, ckpt) in tasks.items()})
    torch.manual_seed(123)
    images = torch.randn(7, 3, IMG, IMG)
    names = list(tasks)
    own = {name: own_scores(config, ckpt, images) for name, (config, ckpt) in tasks.items()}
    for order in ([0, 1, 2, 0, 2, 1, 1], [2, 2, 0, 1, 0, 0, 2]):
        scores = model(images, [names[t] for t in order])
        for row, task in enumerate(order):
            expected = own[names[task]][row]
            assert scores[row].shape == expected.shape == (CLASS_COUNTS[task], )
            torch.testing.assert_close(scores[row], expected, atol=1e-5, rtol=0)
    # a batch of one task equals the plain single-task forward
    torch.testing.assert_close(torch.stack(model(images, [1] * 7)), own[names[1]], atol=1e-5,
                               rtol=0)
    return model, own, images


@pytest.mark.parametrize('method', sorted(METHODS))
def test_each_sample_equals_its_own_task_model(tmp_path, demo_backbone, method):
    tasks = make_tasks(tmp_path, demo_backbone, method)
    model, own, images = check_mixed_batches(tasks, tasks['task0'][0])
    # tasks really differ: the same image scored by two tasks' prompts differs
    first = model(images[:2], ['task0', 'task0'])[0][:3]
    second = own['task1'][0][:3]
    assert (first - second).abs().max() > 1e-3
    if method.startswith('e2vpt'):  # the tasks were pruned differently
        masks = model.method.token_mask
        assert masks.shape[0] == 3 and not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize('method', ['vpt_deep', 'vpt_shallow', 'e2vpt_remove', 'cvpt', 'ivpt',
                                    'lora', 'dora', 'ssf', 'adaptformer'])
def test_swin_each_sample_equals_its_own_task_model(tmp_path, tiny_swin, method):
    tasks = make_tasks(tmp_path, tiny_swin, method, swin=True)
    check_mixed_batches(tasks, tasks['task0'][0])


def test_cvpt_prompt_work_is_per_task(tmp_path, demo_backbone, monkeypatch):
    """CVPT's prompt keys/values are projected once per task and forward, not per sample."""
    from mmvpt.models.utils import attention
    tasks = make_tasks(tmp_path, demo_backbone, 'cvpt')
    model = MultiTaskModel(tasks['task0'][0], {n: c for n, (_, c) in tasks.items()})
    rows = []
    project_kv = attention.project_kv
    monkeypatch.setattr(attention, 'project_kv',
                        lambda attn, t: rows.append(t.shape[0]) or project_kv(attn, t))
    model(torch.randn(8, 3, IMG, IMG), [0, 1, 2, 0, 1, 2, 0, 1])
    depth = len(model.backbone.blocks)
    assert rows == [3] * depth


def test_stacked_state_and_memory(tmp_path, demo_backbone):
    tasks = make_tasks(tmp_path, demo_backbone, 'ivpt')
    model = MultiTaskModel(tasks['task0'][0], {n: c for n, (_, c) in tasks.items()})
    method = model.method
    assert method.num_tasks == 3
    assert method.prompts.shape == (3, 4, 3, 64) and method.aggregation.shape == (3, 3, 3, 3)
    assert not any(p.requires_grad for p in model.parameters())
    # one backbone: what is not tuned is held once, the tuned tensors once per task
    _, single = build(tasks['task0'][0])
    tuned = sum(v.numel() for k, v in single.state_dict().items()
                if k.startswith('backbone.prompt.'))
    assert held_elements(model) == held_elements(single.backbone) + 2 * tuned + \
        held_elements(model.heads) + held_elements(model.data_preprocessor)
    assert model.classes['task2'] == ['c0', 'c1', 'c2', 'c3']
    with pytest.raises(RuntimeError, match='eval only'):
        model.train()
    with pytest.raises(KeyError, match='unknown task'):
        model(torch.randn(2, 3, IMG, IMG), ['task0', 'nope'])
    with pytest.raises(ValueError, match='one per sample'):
        model(torch.randn(2, 3, IMG, IMG), ['task0'])


def test_checkpoint_of_another_method_or_backbone_is_named(tmp_path, demo_backbone):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
    cvpt = make_tasks(tmp_path / 'a', demo_backbone, 'cvpt')
    vpt_config = write_config(tmp_path / 'b' / 'vpt.py', demo_backbone, METHODS['vpt_deep'], 3)
    vpt = train_task(vpt_config, tmp_path / 'b' / 'vpt.pth', 0)
    with pytest.raises(CheckpointMismatchError,
                       match=r"task 'odd' \(.*vpt.pth\) was tuned with .*VPT"):
        MultiTaskModel(cvpt['task0'][0], {'task0': cvpt['task0'][1], 'odd': vpt})
    # another prompt count of the same method
    p5_config = write_config(tmp_path / 'b' / 'cvpt5.py', demo_backbone,
                             dict(type='mmvpt.CVPT', num_tokens=5), 3)
    p5 = train_task(p5_config, tmp_path / 'b' / 'cvpt5.pth', 0)
    with pytest.raises(CheckpointMismatchError, match=r"task 'p5'.*num_tokens=5"):
        MultiTaskModel(cvpt['task0'][0], {'task0': cvpt['task0'][1], 'p5': p5})
    # the same setting with its defaults spelled out serves with the others
    spelled = write_config(tmp_path / 'b' / 'spelled.py', demo_backbone,
                           dict(type='mmvpt.CVPT', num_tokens=3, insert=3, ca_trainable=False), 3)
    spelled_task = train_task(spelled, tmp_path / 'b' / 's.pth', 1)
    model = MultiTaskModel(cvpt['task0'][0], {'task0': cvpt['task0'][1], 'spelled': spelled_task})
    assert model.method.num_tasks == 2
    # the shared config's data preprocessor is the one the runner would build
    assert model.data_preprocessor.mean.flatten().tolist() == pytest.approx(
        [123.675, 116.28, 103.53])
    # another backbone: a full (not tuned-only) checkpoint of a fine-tuned ViT
    _, full = build(DEMO_CONFIG)
    full_ckpt = tmp_path / 'b' / 'full.pth'
    torch.save(dict(state_dict=full.state_dict()), full_ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"task 'full'"):
        MultiTaskModel(cvpt['task0'][0], {'task0': cvpt['task0'][1], 'full': str(full_ckpt)})
    assert osp.isfile(cvpt['task0'][1])
