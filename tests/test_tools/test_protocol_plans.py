"""tools/protocol.py's plans (--print-only, in process): each method's protocol as its authors
ran it, the run counts of the official scripts' full grids, a whole folder in one plan, Slurm
job arrays, and one-line errors for what cannot be run."""
import os
import os.path as osp
import re

import pytest

from mmvpt.protocols import Launch, Overrides, plan_configs, run_protocol
from mmvpt.protocols.runner import check_work_dir
from mmvpt.utils.protocol_results import ProtocolError

from tests.conftest import ROOT


def config(name):
    return osp.join(ROOT, 'configs', name)


def plan(capsys, name, tmp_path, overrides=None, **launch):
    """The printed plan of one config, and its counts."""
    capsys.readouterr()
    _, counts = run_protocol(config(name), overrides, Launch(print_only=True, **launch),
                             work_dir=str(tmp_path / 'work'))
    return capsys.readouterr().out, counts


def total_line(out):
    return out.strip().splitlines()[-1]


def commands(out):
    return [line for line in out.splitlines() if line and not line.startswith('#')]


# (config, the plan's total) of the official scripts' full grids.
OFFICIAL_COUNTS = [
    # E2VPT: tune_vtab_PruningRewind_CVK.py / tune_fgvc_PruningRewind.py: 40 (FGVC 36) grid
    # runs, 1 before pruning, a rewind run per (token count, piece count), 5 seeds
    ('e2vpt/vit-b16_vtab-cifar.py', 'E2VPT, VTAB-1k cifar (vit-b16_vtab-cifar.py): 40 + 1 + 40 '
     '+ 5 = 86 trainings (8,600 epochs), 1 scoring pass, 5 tests'),
    ('e2vpt/vit-b16_vtab-dtd.py', '40 + 1 + 72 + 5 = 118 trainings'),
    ('e2vpt/vit-b16_vtab-caltech101.py', '40 + 1 + 72 + 5 = 118 trainings'),
    ('e2vpt/vit-b16_vtab-oxford_flowers102.py', '40 + 1 + 8 + 5 = 54 trainings'),
    ('e2vpt/vit-b16_fgvc-cub.py', '36 + 1 + 40 + 5 = 82 trainings'),
    # VPT: a 40 (FGVC 36) grid per prompt length of {1, 5, 10, 50, 100, 200}, 5 seeds
    ('vpt/vit-b16_vtab-dtd.py', 'VPT-deep, VTAB-1k dtd (vit-b16_vtab-dtd.py): 240 + 5 = 245 '
     'trainings (24,500 epochs)'),
    ('vpt/vit-b16_fgvc-cub.py', '216 + 5 = 221 trainings'),
    ('linear/vit-b16_vtab-dtd.py', '40 + 5 = 45 trainings'),
    ('linear/vit-b16_fgvc-cub.py', '40 + 5 = 45 trainings'),
    ('full/vit-b16_vtab-dtd.py', '16 + 5 = 21 trainings'),
    ('ivpt/vit-b16_vtab-dtd.py', '40 + 5 = 45 trainings'),
    # fixed recipes: the seeds only
    ('cvpt/vit-b16_vtab-dtd.py', 'CVPT, VTAB-1k dtd (vit-b16_vtab-dtd.py): 5 trainings (500 '
     'epochs), 5 tests'),
    ('cvpt/vit-b16_fgvc-cars.py', ': 5 trainings'),
    ('ssf/vit-b16_vtab-dtd.py', ': 5 trainings'),
    ('lora/vit-b16_vtab-dtd.py', ': 5 trainings'),
    ('adapter/vit-b16_vtab-dtd.py', ': 5 trainings'),
    # no source: our AdamW grid
    ('lora/vit-b16_fgvc-cub.py', '24 + 5 = 29 trainings'),
    ('bitfit/vit-b16_vtab-dtd.py', '24 + 5 = 29 trainings'),
    ('adaptformer/vit-b16_fgvc-cub.py', '24 + 5 = 29 trainings'),
    ('dora/vit-b16_vtab-dtd.py', '24 + 5 = 29 trainings'),
    # Adapter+: its authors' recipe and three seeds
    ('adapter_plus/vit-b16_vtab-dtd.py', ': 3 trainings'),
]


@pytest.mark.parametrize('name, total', OFFICIAL_COUNTS)
def test_plans_count_the_official_runs(capsys, tmp_path, name, total):
    out, _ = plan(capsys, name, tmp_path)
    assert total in total_line(out), total_line(out)


def test_e2vpt_plan_names_every_stage_and_its_candidates(capsys, tmp_path):
    out, counts = plan(capsys, 'e2vpt/vit-b16_vtab-dtd.py', tmp_path)
    assert counts == dict(grid=(40, 0, 0), before_pruning=(1, 0, 0), importance=(0, 1, 0),
                          rewind=(72, 0, 0), final=(5, 0, 5))
    headers = re.findall(r'^# (\w+): \d', out, re.M)
    assert headers == [
        'grid', 'before_pruning', 'importance', 'rewind', 'final']
    # the official counts: int(N p / 100) for p = 10..90, at least 1 token and 4 of 16 kept
    assert ('9 token counts [1, 2, 3, 4, 5, 6, 7, 8, 9] of 10 x 8 piece counts '
            '[1, 3, 4, 6, 8, 9, 11, 12] of 16') in out
    assert 'every run: train_cfg.max_epochs=100, without mmvpt.PromptPruningHook' in out
    lines = commands(out)
    assert len(lines) == 40 + 1 + 1 + 72 + 5 + 5
    grid, before, score, rewind, final = lines[0], lines[40], lines[41], lines[42], lines[-6]
    # the grid and the training before pruning learn the masks, as the official model does
    assert 'model.backbone.prompt.learn_masks=True' in grid
    assert 'model.backbone.prompt.learn_masks=True' in before
    assert 'optim_wrapper.optimizer.lr=${LR}' in before  # the grid's best, not known yet
    assert 'tools/analysis/prompt_importance.py' in score
    assert 'before_pruning/last_checkpoint' in score and 'split=train800' in score
    # rewind runs: fixed masks (zeroed, still attending) from the scores
    assert 'prune_mode=mask' in rewind and 'learn_masks' not in rewind
    assert 'custom_hooks.2.tokens=1 custom_hooks.2.pieces=1' in rewind
    assert 'custom_hooks.2.tokens=${MASKED_TOKENS}' in final
    assert 'custom_hooks.2.pieces=${MASKED_PIECES}' in final
    # the stage configs drop the one-run pruning hook and add the mask hook
    from mmengine.config import Config
    rewind_cfg = Config.fromfile(str(tmp_path / 'work' / 'configs' / 'rewind.py'))
    assert [h['type'] for h in rewind_cfg.custom_hooks] == [
        'mmvpt.ParameterReportHook', 'mmvpt.TunedCheckpointHook', 'mmvpt.PromptMaskHook']
    assert rewind_cfg.custom_hooks[2].scores == str(tmp_path / 'work' / 'importance' /
                                                    'scores.json')
    grid_cfg = Config.fromfile(str(tmp_path / 'work' / 'configs' / 'grid.py'))
    assert [h['type'] for h in grid_cfg.custom_hooks] == [
        'mmvpt.ParameterReportHook', 'mmvpt.TunedCheckpointHook']


def test_vpt_plan_searches_the_prompt_length_with_lr_and_wd(capsys, tmp_path):
    out, _ = plan(capsys, 'vpt/vit-b16_vtab-dtd.py', tmp_path)
    lines = commands(out)[:240]
    tokens = [int(re.search(r'prompt\.num_tokens=(\d+)', line).group(1)) for line in lines]
    assert tokens[::40] == [1, 5, 10, 50, 100, 200]  # the prompt length outermost
    assert 'ties going to the smaller lr, then the smaller P, then the first run' in out
    assert '/grid/P1_lr12.5_wd0.01 ' in lines[0]


def test_fixed_recipes_and_grids_of_ours_say_where_they_come_from(capsys, tmp_path):
    out, _ = plan(capsys, 'cvpt/vit-b16_vtab-dtd.py', tmp_path / 'cvpt')
    assert "CVPT's per-task recipe protocol" in out and '# grid' not in out
    train = commands(out)[0]
    assert 'optimizer.lr' not in train  # the config's own lr
    out, _ = plan(capsys, 'lora/vit-b16_fgvc-cub.py', tmp_path / 'lora')
    assert 'note: no source gives a LoRA FGVC recipe' in out
    lrs = [re.search(r'optimizer\.lr=(\S+)', line).group(1) for line in commands(out)[:24:4]]
    assert lrs == ['0.01', '0.005', '0.002', '0.001', '0.0005', '0.0002']  # AdamW's, unscaled


def test_a_folder_is_a_whole_table(capsys, tmp_path):
    configs = plan_configs([config('e2vpt')])
    assert len(configs) == 48  # 19 + 5 tasks, ViT-B and Swin-B; not the SETR config
    assert not any('setr' in c for c in configs)
    with pytest.raises(ProtocolError, match='no \\*_vtab-\\*.py or \\*_fgvc-\\*.py config'):
        plan_configs([str(tmp_path)])


def test_slurm_arrays(capsys, tmp_path):
    out, _ = plan(capsys, 'vpt/vit-b16_fgvc-cub.py', tmp_path,
                  overrides=Overrides(num_tokens=[10]), launcher='slurm', partition='gpu',
                  array=True, array_limit=8)
    script = tmp_path / 'work' / 'grid' / 'array0.sh'
    assert f'sbatch --wait --array=0-35%8 {script}' in out
    text = script.read_text()
    assert text.count('slurm_train.sh gpu vpt-cub') == 36
    assert '#SBATCH --partition=gpu' in text
    assert re.search(r'^35\) .*P10_lr0\.025_wd0 ', text, re.M)
    assert '#SBATCH --ntasks=1' in text and '#SBATCH --gres=gpu:1' in text


def test_what_cannot_run_is_one_line_naming_it(capsys, tmp_path):
    def error(name, overrides=None, stage='all', print_only=True, **launch):
        with pytest.raises(ProtocolError) as info:
            run_protocol(config(name), overrides, Launch(print_only=print_only, **launch), stage,
                         str(tmp_path / 'work'))
        return str(info.value)
    assert '--token-fractions 1.5: pruning fractions lie in (0, 1)' in error(
        'e2vpt/vit-b16_vtab-dtd.py', Overrides(token_fractions=[0.5, 1.5]))
    assert 'pruning fractions lie in (0, 1)' in error(
        'e2vpt/vit-b16_vtab-dtd.py', Overrides(piece_fractions=[0]))
    assert 'has no pruning stage' in error('vpt/vit-b16_vtab-dtd.py',
                                           Overrides(token_fractions=[0.5]))
    assert "--stage rewind: VPT's protocol has the stages grid, final" in error(
        'vpt/vit-b16_vtab-dtd.py', stage='rewind')
    assert 'searches nothing (its recipe is fixed' in error('cvpt/vit-b16_vtab-dtd.py',
                                                            Overrides(lrs=[0.1]))
    assert 'searches lrs for SGD, but the config trains with AdamW' in error(
        'vpt/vit-b16_vtab-dtd.py', cfg_options=('optim_wrapper.optimizer.type=AdamW', ))
    # a stage started before the one it needs has finished
    assert ('--stage rewind needs stage grid finished' in
            error('e2vpt/vit-b16_vtab-dtd.py', stage='rewind', print_only=False))


def test_a_work_dir_holds_one_configs_results(capsys, tmp_path):
    from mmvpt.protocols import describe_config, resolve_protocol
    work_dir = tmp_path / 'work'
    info = describe_config(config('vpt/vit-b16_vtab-dtd.py'))
    check_work_dir(str(work_dir), info, resolve_protocol(info), write=True)
    os.makedirs(work_dir / 'grid' / 'P1_lr12.5_wd0.01')
    (work_dir / 'grid' / 'P1_lr12.5_wd0.01' / 'score.json').write_text('{"score": 1.0}\n')
    before = {p: os.stat(p).st_mtime_ns for p in work_dir.rglob('*')}
    for other, said in (('vpt/vit-b16_vtab-cifar.py', "config 'vit-b16_vtab-dtd.py'"),
                        ('cvpt/vit-b16_vtab-dtd.py', 'results of another config')):
        with pytest.raises(ProtocolError, match=re.escape(said)):
            run_protocol(config(other), None, Launch(), 'all', str(work_dir))
    # a changed model is a changed config too
    with pytest.raises(ProtocolError, match='the model, optimizer or schedule changed'):
        run_protocol(config('vpt/vit-b16_vtab-dtd.py'), None,
                     Launch(cfg_options=('model.backbone.prompt.dropout=0.2', )), 'all',
                     str(work_dir))
    assert {p: os.stat(p).st_mtime_ns for p in work_dir.rglob('*')} == before


def test_scoring_runs_through_every_launcher(capsys, tmp_path):
    """E2VPT's scoring pass goes through torchrun / srun like the trainings."""
    for launch, expected in ((dict(launcher='dist', gpus=2), r'bash \S+/torchrun\.sh 2 '
                              r'analysis/prompt_importance\.py \S+/importance\.py "\$\(cat '),
                             (dict(launcher='slurm', gpus=2, partition='gpu'),
                              r'GPUS=2 GPUS_PER_NODE=2 bash \S+/srun\.sh gpu e2vpt-cub '
                              r'analysis/prompt_importance\.py ')):
        out, _ = plan(capsys, 'e2vpt/vit-b16_fgvc-cub.py', tmp_path, **launch)
        score = next(line for line in commands(out) if 'prompt_importance' in line)
        assert re.search(expected, score), score
        assert f'--out {tmp_path}/work/importance/scores.json' in score
        assert f'--work-dir {tmp_path}/work/importance ' in score


def test_adapter_plus_runs_its_authors_seeds_and_splits(capsys, tmp_path):
    out, _ = plan(capsys, 'adapter_plus/vit-b16_fgvc-cub.py', tmp_path)
    assert 'seeds 18 45 25' in out and 'train on trainval (no validation)' in out
    lines = commands(out)
    assert len(lines) == 6 and all('randomness.seed=' in line for line in lines)
    assert 'train_dataloader.dataset.split=trainval ' in lines[0]
