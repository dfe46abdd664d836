"""README "Your own dataset", run as written: from a folder outside the repository, in a fresh
shell whose python has no torch (the tools find mmvpt's environment), with configs kept in
that folder (one whose `_base_` names the repository's config by absolute path), the smoke
data of tools/misc/smoke_data.py, one epoch of training, then the test."""
import os.path as osp
import re
import shlex
import subprocess

import pytest
from mmengine.config import Config

from tests.conftest import ROOT
from tests.test_tools import test_shell_env
from tests.test_tools.test_shell_env import fresh_shell_env

# test_shell_env's fixtures: a python without torch, mmvpt's built environment
torchless_bin, built_env = test_shell_env.torchless_bin, test_shell_env.built_env

pytestmark = pytest.mark.tools

CLONE_LINE = 'MMVPT=/path/to/mmvpt'


def readme_recipe():
    """The bash blocks of README's "### Your own dataset", in order, as one script."""
    with open(osp.join(ROOT, 'README.md')) as f:
        readme = f.read()
    section = readme.split('\n### Your own dataset\n', 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'^```bash\n(.*?)^```$', section, flags=re.S | re.M)
    assert len(blocks) == 2 and blocks[0].startswith(CLONE_LINE), blocks
    return '\n'.join(blocks)


def test_the_own_dataset_recipe_runs_from_any_folder(torchless_bin, built_env, tmp_path):
    script = readme_recipe().replace(CLONE_LINE, f'MMVPT={shlex.quote(ROOT)}', 1)
    env = fresh_shell_env(torchless_bin, built_env)
    proc = subprocess.run(['bash', '-e', '-c', script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    # the config kept outside the repository names its base by absolute path
    own = (tmp_path / 'my_dataset.py').read_text()
    assert f"_base_ = ['{ROOT}/configs/cvpt/vit-b16_vtab-cifar.py']" in own
    # smoke_data.py's data: the own-dataset layout, 5 classes, 8 / 4 / 4 images per class
    task = tmp_path / 'smoke' / 'my_dataset'
    assert sorted(p.name for p in task.glob('*.txt')) == ['test.txt', 'train.txt', 'val.txt']
    for split, count in (('train', 40), ('val', 20), ('test', 20)):
        lines = (task / f'{split}.txt').read_text().splitlines()
        assert len(lines) == count
        assert sorted({int(line.split()[1]) for line in lines}) == [0, 1, 2, 3, 4]
        assert all((task / line.split()[0]).is_file() for line in lines)
    assert (tmp_path / 'smoke' / 'tiny_vit.pth').is_file()

    # trained in the folder the recipe ran in, with the user's config under the smoke one
    work_dir = tmp_path / 'work_dirs' / 'smoke'
    assert (work_dir / 'epoch_1.pth').is_file()
    saved = Config.fromfile(str(work_dir / 'smoke.py'))
    assert saved.model.backbone.prompt.type == 'mmvpt.CVPT'
    assert saved.model.head.num_classes == 5
    dataset = saved.test_dataloader.dataset
    assert (dataset.type, dataset.data_root, dataset.split) == (
        'mmvpt.ListFileDataset', 'smoke/my_dataset', 'test')
    assert dataset.classes == ['cat', 'dog', 'fox', 'owl', 'yak']
    # then tested: the last command's metric
    assert re.search(r'Epoch\(test\) \[1/1\]\s+accuracy/top1: \d+\.\d+', proc.stdout + proc.stderr)
