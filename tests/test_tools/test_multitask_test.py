"""tools/multitask_test.py (mmvpt.apis.multitask_eval): three CVPT tasks trained with
tools/train.py on the tiny ViT (different class counts, data and normalisation), tested
through one MultiTaskModel in batches that mix them. Every task's accuracy and every image's
scores equal its own tools/test.py run; bad --task values stop the tool with one line."""
import json
import os.path as osp
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch

from mmvpt.apis.multitask_eval import MultiTaskTestError, parse_task
from mmvpt.utils.tuned_checkpoint import save_tuned_checkpoint

from tests.conftest import DEMO_ARCH, ROOT, pretrained_line, tool_env

# name: (classes, data seed, ring turn, data_preprocessor overrides)
TASKS = dict(
    rings=(3, 1, 0.0, {}),
    turned=(5, 2, 0.5, dict(mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)),
    four=(4, 3, 0.25, {}),
)
NUM_TEST = 20


def write_task_config(path, pretrained, data_root, num_classes, preprocessor):
    """A CVPT run on the demo's frozen tiny ViT: trained, tested and served with one file."""
    from tests.conftest import DEMO_CONFIG
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        f"data_root = {data_root!r}\n"
        f"model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.CVPT', num_tokens=4)),\n"
        f"             head=dict(num_classes={num_classes}))\n"
        + pretrained_line(pretrained) +
        f"data_preprocessor = dict(num_classes={num_classes}, **{preprocessor!r})\n"
        "train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "test_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))\n"
        "optim_wrapper = dict(optimizer=dict(lr=1e-2))\n"
        "custom_hooks = [dict(type='mmvpt.TunedCheckpointHook')]\n"
        "train_cfg = dict(max_epochs=2, val_interval=100)\n"
        "default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))\n")
    return str(path)


def run_parallel(tmp, tag, *commands, check=True):
    """Runs ``python tools/<command>`` for every command at once (2 cores: the start-up of
    one overlaps the work of another); returns [(returncode, stdout, stderr)]. Their outputs
    stay in ``tmp`` as TAG.N.out / TAG.N.err."""
    procs = []
    for index, args in enumerate(commands):
        out, err = (open(tmp / f'{tag}.{index}.{kind}', 'w+') for kind in ('out', 'err'))
        cmd = [sys.executable, osp.join(ROOT, 'tools', args[0]), *args[1:]]
        procs.append((cmd, subprocess.Popen(cmd, cwd=ROOT, env=tool_env(), stdout=out, stderr=err,
                                            text=True), out, err))
    results = []
    for cmd, proc, out, err in procs:
        proc.wait(timeout=600)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read())
            f.close()
        if check and proc.returncode != 0:
            raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                                 f'{texts[0][-3000:]}\n{texts[1][-6000:]}')
        results.append((proc.returncode, *texts))
    return results


@pytest.fixture(scope='module')
def trained(demo_backbone, tmp_path_factory):
    """{task: (test config, checkpoint)}: three tools/train.py runs (tuned-only checkpoints)."""
    from mmvpt.testing import make_vtab_task
    tmp = tmp_path_factory.mktemp('multitask_tool')
    tasks = {}
    for name, (classes, seed, turn, preprocessor) in TASKS.items():
        data = make_vtab_task(str(tmp / 'data'), name, num_classes=classes, num_train=24, num_val=4,
                              num_test=NUM_TEST, size=32, seed=seed, angle_offset=turn)
        config = write_task_config(tmp / f'{name}.py', demo_backbone, data, classes, preprocessor)
        tasks[name] = (config, str(tmp / 'work' / name / 'epoch_2.pth'))
    run_parallel(tmp, 'train', *[('train.py', config, '--work-dir', osp.dirname(ckpt))
                        for config, ckpt in tasks.values()])
    return tmp, tasks


@pytest.mark.tools
def test_each_task_equals_its_own_test_run(trained):
    tmp, tasks = trained
    # a checkpoint path holding ':' (split at the last ':')
    colon_dir = tmp / 'run:1'
    colon_dir.mkdir()
    served = dict((name, ckpt) for name, (_, ckpt) in tasks.items())
    served['four'] = shutil.copy(tasks['four'][1], colon_dir / 'epoch_2.pth')
    out = tmp / 'multitask.json'
    commands = [('test.py', config, ckpt, '--work-dir', str(tmp / 'test' / name),
                 '--out', str(tmp / f'{name}.pkl')) for name, (config, ckpt) in tasks.items()]
    commands.append(('multitask_test.py', tasks['rings'][0], '--batch-size', '7', '--out', str(out),
                     *[arg for name, (config, _) in tasks.items()
                       for arg in ('--task', f'{name}={served[name]}:{config}')]))
    *single, (_, multi_stdout, _) = run_parallel(tmp, 'test', *commands)
    result = json.loads(out.read_text())
    assert list(result['tasks']) == list(TASKS)
    assert result['images'] == 3 * NUM_TEST and result['model_images_per_s'] > 0
    accuracies = []
    for (name, (classes, *_)), (_, stdout, stderr) in zip(TASKS.items(), single):
        own = float(re.findall(r'Epoch\(test\).*accuracy/top1: ([\d.]+)', stdout + stderr)[-1])
        mine = result['tasks'][name]
        assert round(mine['metrics']['accuracy/top1'], 4) == own, name
        assert re.search(rf'\| {name} \| {NUM_TEST} \| {own:.4f} \|', multi_stdout)
        accuracies.append(own)
        with open(tmp / f'{name}.pkl', 'rb') as f:
            expected = pickle.load(f)
        got = mine['predictions']
        assert [p['img_path'] for p in got] == [p['img_path'] for p in expected]
        for g, e in zip(got, expected):
            assert len(g['pred_score']) == classes
            torch.testing.assert_close(torch.tensor(g['pred_score']), e['pred_score'].float(),
                                       rtol=0, atol=1e-5)
            assert g['pred_label'] == int(e['pred_label']) and g['gt_label'] == int(e['gt_label'])
    # not a trivially equal or perfect score everywhere
    assert any(0 < acc < 100 for acc in accuracies), accuracies
    assert 'images/s in the model' in multi_stdout


def test_task_spec_splits_at_the_last_colon():
    assert parse_task('dtd=work_dirs/run:2/epoch_1.pth:configs/x.py') == (
        'dtd', 'work_dirs/run:2/epoch_1.pth', 'configs/x.py')
    for bad in ('dtd', 'dtd=a.pth', '=a.pth:x.py', 'dtd=:x.py', 'dtd=a.pth:'):
        with pytest.raises(MultiTaskTestError, match='expected NAME=CHECKPOINT:TEST_CONFIG'):
            parse_task(bad)


def one_line_error(result):
    code, _, stderr = result
    assert code != 0 and 'Traceback' not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith('mmvpt: '), stderr
    return lines[-1]


def untrained_checkpoint(path, method, num_classes):
    """A tuned-only checkpoint of the demo's tiny ViT with 4 prompts of ``method`` (as
    initialised) and a ``num_classes`` head."""
    from mmpretrain.models import ImageClassifier
    model = ImageClassifier(
        backbone=dict(type='mmvpt.PromptedViT', img_size=32, arch_cfg=DEMO_ARCH,
                      prompt=dict(type=f'mmvpt.{method}', num_tokens=4)),
        head=dict(type='mmpretrain.LinearClsHead', num_classes=num_classes, in_channels=64))
    return save_tuned_checkpoint(path, model)


@pytest.mark.tools
def test_bad_tasks_stop_with_one_line(demo_backbone, tmp_path):
    config = write_task_config(tmp_path / 'rings.py', demo_backbone, str(tmp_path / 'no_data'), 3,
                               {})
    checkpoint = untrained_checkpoint(tmp_path / 'rings.pth', 'CVPT', 3)
    vpt = untrained_checkpoint(tmp_path / 'vpt.pth', 'VPT', 3)  # another method's
    missing = tmp_path / 'nope' / 'epoch_1.pth'
    malformed, absent, other, no_task = run_parallel(
        tmp_path, 'bad',
        ('multitask_test.py', config, '--task', f'rings={checkpoint}'),
        ('multitask_test.py', config, '--task', f'rings={checkpoint}:{config}',
         '--task', f'gone={missing}:{config}'),
        ('multitask_test.py', config, '--task', f'rings={checkpoint}:{config}',
         '--task', f'odd={vpt}:{config}'),
        ('multitask_test.py', config), check=False)
    assert 'expected NAME=CHECKPOINT:TEST_CONFIG' in one_line_error(malformed)
    assert one_line_error(absent) == f"mmvpt: task 'gone': {missing}: no such checkpoint file"
    message = one_line_error(other)
    assert "task 'odd'" in message and 'VPT' in message and 'CVPT' in message
    assert 'no --task given' in one_line_error(no_task)
