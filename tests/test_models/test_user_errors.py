"""What a user meets on the way: a typo'd method option, a missing pretrained file, a user
error in tools/train.py and tools/test.py (one line, the traceback in the log file), and the
position-embedding resize mode of a pretrained checkpoint."""
import os.path as osp

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from mmvpt.models import PromptedViT
from mmvpt.testing import write_random_vit

from tests.conftest import ROOT, run_tool
from tests.helpers.tiny_models import vit_arch, vit_spec

TINY_ARCH = vit_arch(depth=2)


def tiny_vit(**kwargs):
    return PromptedViT(**vit_spec(depth=2), **kwargs)


@pytest.mark.parametrize('prompt, message', [
    (dict(type='mmvpt.CVPT', num_token=5),
     "CVPT has no option 'num_token'; did you mean 'num_tokens'?"),
    (dict(type='mmvpt.E2VPT', kv_locaton='after'),
     "E2VPT has no option 'kv_locaton'; did you mean 'kv_location'?"),
    (dict(type='mmvpt.VPT', deep=True, depth=3), "VPT has no option 'depth'; did you mean 'deep'?"),
    (dict(type='mmvpt.IVPT', colour=1), r"IVPT has no option 'colour' \(IVPT options: ar_init, "),
])
def test_an_unknown_method_option_names_the_method_and_the_closest_option(prompt, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(prompt=prompt)


def test_a_method_switched_over_another_methods_config_names_delete_and_its_base_config(
        tmp_path):
    # LoRA over a CVPT config: MMEngine merges the new prompt dict into the inherited one
    from mmengine.config import Config
    switched = tmp_path / 'lora.py'
    switched.write_text(f"_base_ = [{osp.join(ROOT, 'configs/cvpt/vit-b16_vtab-cifar.py')!r}]\n"
                        "model = dict(backbone=dict(prompt=dict(type='mmvpt.LoRA', rank=4)))\n")
    prompt = Config.fromfile(str(switched)).model.backbone.prompt.to_dict()
    assert prompt['ca_init'] == 'shared'  # CVPT's, inherited
    with pytest.raises(ValueError) as err:
        tiny_vit(prompt=prompt)
    assert str(err.value) == (
        "LoRA has no option 'ca_init', an option of CVPT: a config switching methods replaces "
        "the inherited prompt with prompt=dict(_delete_=True, type='mmvpt.LoRA', ...) or "
        'inherit configs/_base_/methods/lora.py (its recipe and hooks) (LoRA options: alpha, '
        'dropout, rank, targets)')
    # the fix the message names
    switched.write_text(switched.read_text().replace('dict(type=', 'dict(_delete_=True, type='))
    prompt = Config.fromfile(str(switched)).model.backbone.prompt.to_dict()
    assert prompt == dict(type='mmvpt.LoRA', rank=4)
    assert tiny_vit(prompt=prompt).prompt.rank == 4


def test_the_base_config_a_method_error_names_exists():
    from mmvpt.models.methods import method_classes
    folders = [cls.config_folder for cls in method_classes() if cls.config_folder]
    assert len(folders) >= 11
    missing = [f for f in folders
               if not osp.isfile(osp.join(ROOT, f'configs/_base_/methods/{f}.py'))]
    assert missing == []


def test_every_documented_option_is_accepted():
    tiny_vit(prompt=dict(type='mmvpt.E2VPT', num_tokens=2, num_kv_tokens=1, kv_location='after',
                         share_kv=False, num_segments=4, segment_layout='interleaved',
                         prune_mode='mask', dropout=0., dropout_mode='batch'))


def test_a_missing_pretrained_file_says_where_weights_go(tmp_path):
    model = tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'ViT-B_16.npz')))
    with pytest.raises(FileNotFoundError,
                       match=r"ViT-B_16.npz' \(model.backbone.init_cfg.checkpoint\) does "
                       r'not exist.*--cfg-options model.backbone.init_cfg.checkpoint=PATH'):
        model.init_weights()


@pytest.mark.parametrize('mode', ['bicubic', 'bilinear'])
def test_load_pretrained_resizes_the_position_embedding_with_interpolate_mode(tmp_path, mode):
    # weights for a 6x6 grid (48 px), written into a folder that does not exist yet
    path = write_random_vit(tmp_path / 'new' / 'vit.pth', img_size=48, **TINY_ARCH)
    saved = torch.load(path)['pos_embed']
    model = tiny_vit(interpolate_mode=mode, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    expected = {m: resample_abs_pos_embed(saved, (4, 4), num_prefix_tokens=1, interpolation=m,
                                          antialias=True) for m in ('bicubic', 'bilinear')}
    assert not torch.allclose(expected['bicubic'], expected['bilinear'], atol=1e-4)
    torch.testing.assert_close(model.vit.pos_embed.detach(), expected[mode], rtol=0, atol=1e-6)


def test_an_unreadable_checkpoint_is_named(tmp_path):
    from mmvpt.utils import load_local_checkpoint
    from mmvpt.utils.checkpoint_loading import UnreadableCheckpointError
    whole = tmp_path / 'epoch_1.pth'
    torch.save(dict(state_dict={'w': torch.arange(4096.)}, meta=dict(epoch=1)), whole)
    assert torch.equal(load_local_checkpoint(str(whole))['state_dict']['w'], torch.arange(4096.))
    data = whole.read_bytes()
    files = {'truncated.pth': data[:len(data) // 2], 'empty.pth': b'', 'text.pth': b'hello'}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UnreadableCheckpointError) as err:
            load_local_checkpoint(str(tmp_path / name))
        message = str(err.value)
        assert message.startswith(f"checkpoint file '{tmp_path / name}' ({len(content):,} bytes) "
                                  'cannot be read by torch.load (')
        assert message.endswith('it is truncated (an interrupted copy or download?), corrupt, '
                                'or not a torch checkpoint')
        assert isinstance(err.value, OSError)  # a user error: the tools end it in one line


@pytest.mark.tools
def test_train_and_test_end_a_user_error_with_one_line(tmp_path):
    config = osp.join(ROOT, 'configs/cvpt/vit-b16_vtab-dtd.py')
    proc = run_tool('train.py', config, '--work-dir', str(tmp_path / 'work'),
                    '--cfg-options', 'model.backbone.prompt.num_token=5', check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert last.startswith("mmvpt: ValueError: CVPT has no option 'num_token'; "
                           "did you mean 'num_tokens'?")
    log_file = last.rsplit('(traceback in ', 1)[1].rstrip(')')
    assert log_file.startswith(str(tmp_path / 'work'))
    with open(log_file) as f:
        log = f.read()
    assert 'Traceback' in log and "CVPT has no option 'num_token'" in log
    # before the runner has a log file: the line alone
    proc = run_tool('test.py', config, str(tmp_path / 'missing.pth'), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"mmvpt: FileNotFoundError: checkpoint '{tmp_path / 'missing.pth'}' does not exist")
