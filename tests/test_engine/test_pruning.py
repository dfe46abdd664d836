"""E²VPT pruning in one place: the pruned forward against the method's equations, one
training run with PromptPruningHook (masks, prompt_pruning.json, rewinding, resume at every
point, the tuned-only checkpoint), the hook's scores E|dL/drho| against a hand computation
(tests/helpers/pruning_reference.py), its choice of tokens and segments on scores whose answer
is written out, each of its options, and two processes scoring as one."""
import glob
import json
import math
import os
import os.path as osp
import uuid

import pytest
import torch

from mmvpt.engine.hooks import PromptPruningHook, tuned_state_keys
from mmvpt.utils import load_local_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, free_port, run_tool
from tests.helpers.pruning_reference import batches_of, reference_scores
from tests.helpers.runners import E2VPT, make_runner, write_config
from tests.helpers.tiny_models import peaked
from tests.helpers.vit_reference import assert_forward_equals, tokens_reference

L, D = 3, 32  # the tiny ViT's blocks and width


# -- the pruned forward ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize('prune_mode', ['remove', 'mask'])
@pytest.mark.parametrize('layout', ['contiguous', 'interleaved'])
def test_e2vpt_pruning_masks(images, prune_mode, layout):
    model = peaked(dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
                        segment_layout=layout, prune_mode=prune_mode))
    m = model.prompt
    token_mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.float)
    segment_mask = torch.ones(L, 4, 4)
    segment_mask[0, 0, 1] = 0
    segment_mask[2, 3, 0] = 0
    m.token_mask.copy_(token_mask)
    m.segment_mask.copy_(segment_mask)

    def pruned(i):
        dims = torch.ones(4, D)
        for t in range(4):
            for r in range(4):
                if segment_mask[i, t, r] == 0:
                    if layout == 'contiguous':
                        dims[t, r * 8:(r + 1) * 8] = 0
                    else:
                        dims[t, r::4] = 0
        prompts = m.prompts[i] * dims * token_mask[i, :, None]
        return prompts[token_mask[i].bool()] if prune_mode == 'remove' else prompts
    expected = tokens_reference(model, images, pruned,
                                kv=lambda i: (m.kv_prompts[i], m.kv_prompts[i]))
    assert_forward_equals(model, expected, images)


# -- one training run: prune after 2 epochs, rewind, 2 more ----------------------------------------
PRUNING = ("dict(type='mmvpt.PromptPruningHook', prune_after=2, token_fraction=0.5, "
           "segment_fraction=0.5), dict(type='mmvpt.TunedCheckpointHook'), "
           "dict(type='SnapshotAfterPruningHook', epoch=2)")


def method_of(runner):
    return runner.model.backbone.prompt


def tuned(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()
            if k in tuned_state_keys(runner.model)}


@pytest.fixture(scope='module')
def pruned_run(tiny_vtab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('prune')
    config = write_config(tmp, E2VPT, PRUNING)
    runner = make_runner(config, tmp / 'work', tiny_vtab)
    runner.train()
    return config, runner


def test_pruning_masks_json_and_report(pruned_run):
    config, runner = pruned_run
    m = method_of(runner)
    assert m.token_mask.sum(1).tolist() == [2.] * 4  # half of 4 tokens per block
    kept = m.token_mask.bool()
    assert (m.segment_mask[~kept] == 0).all()
    # 2 kept tokens x 4 segments per block, half pruned, each kept token keeps one at least
    assert m.segment_mask.sum((1, 2)).tolist() == [4.] * 4
    assert (m.segment_mask[kept].sum(-1) >= 1).all()
    with open(osp.join(runner.work_dir, 'prompt_pruning.json')) as f:
        result = json.load(f)['prompts']['backbone.prompt']
    assert result['kept_tokens'] == [row.nonzero().flatten().tolist() for row in m.token_mask]
    assert len(result['token_scores']) == 4 and len(result['segment_scores'][0]) == 4
    # tuned after pruning: 4 blocks x 4 segments x 16 dims + KV 4x4x2x16 + head 4x64+4
    log = open(next(osp.join(runner.log_dir, f) for f in os.listdir(runner.log_dir)
                    if f.endswith('.log'))).read()
    assert 'prompt pruning done; tuned parameters: 1,028 of' in log


def test_rewinding_restores_start_values_and_restarts_schedule(pruned_run):
    _, runner = pruned_run
    snap = next(h for h in runner.hooks if type(h).__name__ == 'SnapshotAfterPruningHook')
    assert snap.before.keys() == snap.after.keys()
    for name in snap.before:
        torch.testing.assert_close(snap.after[name], snap.before[name], rtol=0, atol=0)
    # The warm-up starts again: lr back at 0.1 x base after the stage switch.
    assert snap.lrs == pytest.approx([2e-3 * 0.1])
    assert runner.optim_wrapper.optimizer.param_groups[0]['initial_lr'] == 2e-3


@pytest.mark.parametrize('resume_epoch', [1, 2, 3])
def test_kill_and_resume_matches_uninterrupted_run(pruned_run, tiny_vtab, tmp_path, resume_epoch):
    config, full = pruned_run
    checkpoint = osp.join(full.work_dir, f'epoch_{resume_epoch}.pth')
    runner = make_runner(config, tmp_path, tiny_vtab, resume=True, load_from=checkpoint)
    runner.train()
    # it went on from the checkpoint: a run from the start would end equal too (seeded)
    assert sorted(osp.basename(p) for p in glob.glob(str(tmp_path / 'epoch_*.pth'))) == [
        f'epoch_{epoch}.pth' for epoch in range(resume_epoch + 1, 5)]
    expected, got = tuned(full), tuned(runner)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_pruned_checkpoint_is_tuned_only_and_carries_the_result(pruned_run):
    _, runner = pruned_run
    ckpt = load_local_checkpoint(osp.join(runner.work_dir, 'epoch_4.pth'))
    assert not any(k.startswith('backbone.vit.') for k in ckpt['state_dict'])
    assert {'backbone.prompt.token_mask', 'backbone.prompt.segment_mask',
            'backbone.prompt.prompts', 'head.fc.weight'} <= set(ckpt['state_dict'])
    assert ckpt['prompt_pruning']['pruned'] is True
    torch.testing.assert_close(ckpt['state_dict']['backbone.prompt.token_mask'],
                               method_of(runner).token_mask)


def test_pruning_hook_bad_input(tiny_vtab, tmp_path):
    for value in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=f'token_fraction={value!r}'):
            PromptPruningHook(prune_after=1, token_fraction=value)
    with pytest.raises(ValueError, match='segment_fraction=1'):
        PromptPruningHook(prune_after=1, segment_fraction=1)
    config = write_config(tmp_path, "dict(type='mmvpt.CVPT', num_tokens=2)",
                          "dict(type='mmvpt.PromptPruningHook', prune_after=1)")
    runner = make_runner(config, tmp_path / 'w', tiny_vtab)
    with pytest.raises(ValueError, match=r"prunable.*\['CVPT'\]"):
        runner.train()


# -- the scores -----------------------------------------------------------------------------------
NUM_TRAIN = 64  # tiny_vtab's training images


def pruning_config(tmp_path, hook_options, batch_size=16, extra=''):
    """The demo's tiny ViT (4 blocks, width 64) with 4 E²VPT tokens of 4 segments, no prompt
    dropout, and a training loader that does not shuffle, so the test knows every batch."""
    path = tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=4, "
        "num_kv_tokens=2, num_segments=4, dropout=0.)))\n"
        f"custom_hooks = [dict(type='mmvpt.PromptPruningHook', {hook_options})]\n"
        f"train_dataloader = dict(batch_size={batch_size}, sampler=dict(shuffle=False))\n"
        "randomness = dict(seed=0, deterministic=True)\n" + extra)
    return str(path)


def pruning_hook(runner):
    return next(h for h in runner.hooks if isinstance(h, PromptPruningHook))


def ready_runner(tmp_path, data_root, hook_options, batch_size=16):
    """A runner in the state PromptPruningHook.prune_and_rewind meets during training (optimizer
    built, start values saved), without training."""
    runner = make_runner(pruning_config(tmp_path, hook_options, batch_size), tmp_path / 'work',
                         data_root)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    hook = pruning_hook(runner)
    hook.before_train(runner)
    return runner, hook


def exported(runner):
    with open(osp.join(runner.work_dir, 'prompt_pruning.json')) as f:
        return json.load(f)['prompts']['backbone.prompt']


def kept_segments(segment_mask):
    return [[seg.nonzero().flatten().tolist() for seg in block] for block in segment_mask]


def assert_scores_equal(got, expected):
    got = torch.as_tensor(got, dtype=expected.dtype)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def assert_clearly_different(a, b):
    """Far beyond assert_scores_equal's tolerance: a check telling them apart can fail."""
    assert (a - b).abs().max() > 0.05 * b.abs().max()


def give_scores(hook, token_scores, segment_scores):
    """Replaces the gradient pass by fixed scores (first call: tokens, second: segments)."""
    def scores(runner, masks):
        return [(token_scores if masks[0].dim() == 2 else segment_scores).clone()]
    hook._scores = scores


def test_scores_are_mean_abs_mask_gradients_and_the_top_ones_are_kept(tiny_vtab, tmp_path):
    runner, hook = ready_runner(tmp_path, tiny_vtab,
                                'prune_after=1, token_fraction=0.5, segment_fraction=0.5')
    model, method = runner.model, runner.model.backbone.prompt
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = batches_of(runner.train_dataloader.dataset, range(NUM_TRAIN), 16)
    assert len(batches) == 4
    expected_tokens, _ = reference_scores(model, batches)
    signed_tokens, _ = reference_scores(model, batches, signed=True)
    # Gradients of both signs: a score without |.| would be told apart.
    assert (signed_tokens < 0).any() and (signed_tokens > 0).any()
    assert_clearly_different(signed_tokens, expected_tokens)

    hook.prune_and_rewind(runner)
    result = exported(runner)
    assert_scores_equal(result['token_scores'], expected_tokens)
    # The 2 highest of 4 per block are kept, with a clear gap at the cut.
    scores = torch.tensor(result['token_scores'])
    ranked = scores.sort(-1, descending=True)
    assert (ranked.values[:, 1] - ranked.values[:, 2] > 1e-3 * scores.max()).all()
    top = [sorted(row[:2].tolist()) for row in ranked.indices]
    assert result['kept_tokens'] == top
    assert [row.nonzero().flatten().tolist() for row in method.token_mask] == top

    # Segments are scored on the token-pruned model (same weights, rewind='init' keeps them).
    token_mask = method.token_mask.clone()
    model.load_state_dict(start)
    with torch.no_grad():
        method.token_mask.copy_(token_mask)
    _, expected_segments = reference_scores(model, batches)
    assert_scores_equal(result['segment_scores'], expected_segments)
    assert (expected_segments[~token_mask.bool()] == 0).all()  # removed tokens: no gradient
    # Of the 8 segments of the kept tokens per block, 4 are pruned: the lowest ones apart from
    # each token's best, which stays.
    segment_scores = torch.tensor(result['segment_scores'])
    for block, tokens in enumerate(top):
        kept = {(t, s) for t in tokens for s in result['kept_segments'][block][t]}
        best = {(t, int(segment_scores[block, t].argmax())) for t in tokens}
        candidates = {(t, s) for t in tokens for s in range(4)} - best
        pruned = candidates - kept
        assert best <= kept and len(pruned) == 4
        assert (max(segment_scores[block][p].item() for p in pruned)
                < min(segment_scores[block][c].item() for c in candidates - pruned))
        assert not any(result['kept_segments'][block][t] for t in range(4) if t not in tokens)


def test_signed_scores_over_the_first_max_batches(tiny_vtab, tmp_path):
    runner, hook = ready_runner(tmp_path, tiny_vtab, "prune_after=1, score='signed', max_batches=2")
    model, method = runner.model, runner.model.backbone.prompt
    batches = batches_of(runner.train_dataloader.dataset, range(NUM_TRAIN), 16)
    expected = reference_scores(model, batches[:2], signed=True)
    all_batches = reference_scores(model, batches, signed=True)
    absolute = reference_scores(model, batches[:2])
    got = hook._scores(runner, [method.token_mask, method.segment_mask])
    for got_scores, want, other_batches, other_score in zip(got, expected, all_batches, absolute):
        assert_scores_equal(got_scores, want)
        assert_clearly_different(other_batches, want)  # all 4 batches: another answer
        assert_clearly_different(other_score, want)  # |.|: another answer
    assert not method.token_mask.requires_grad and not method.segment_mask.requires_grad


# -- the choice, on scores whose answer is known (no ties) ---------------------------------------
def test_block_scope_keeps_each_blocks_top_tokens_and_segments(tiny_vtab, tmp_path):
    runner, hook = ready_runner(tmp_path, tiny_vtab,
                                'prune_after=1, token_fraction=0.5, segment_fraction=0.5')
    method = runner.model.backbone.prompt
    token_scores = torch.tensor([[0.4, 0.1, 0.3, 0.2],    # keeps 0, 2
                                 [0.1, 0.2, 0.3, 0.4],    # keeps 2, 3
                                 [0.3, 0.4, 0.1, 0.2],    # keeps 0, 1
                                 [0.2, 0.3, 0.4, 0.1]])   # keeps 1, 2
    # Pattern a: the 4 lowest of the 6 non-best segments go. Pattern b: the first token's
    # segments are all below the second's, but it keeps its best. Pruned tokens' segments
    # score highest, and must still go.
    a = [[5., 1., 7., 3.], [2., 8., 4., 6.]]
    b = [[1., 2., 3., 4.], [5., 6., 7., 8.]]
    segment_scores = torch.full((4, 4, 4), 100.) + torch.arange(4.)
    for block, (tokens, pattern) in enumerate(zip([(0, 2), (2, 3), (0, 1), (1, 2)], [a, b, a, b])):
        for token, row in zip(tokens, pattern):
            segment_scores[block, token] = torch.tensor(row)
    give_scores(hook, token_scores, segment_scores)
    hook.prune_and_rewind(runner)

    expected_tokens = [[0, 2], [2, 3], [0, 1], [1, 2]]
    expected_segments = [[[0, 2], [], [1, 3], []],
                         [[], [], [3], [1, 2, 3]],
                         [[0, 2], [1, 3], [], []],
                         [[], [3], [1, 2, 3], []]]
    assert [row.nonzero().flatten().tolist() for row in method.token_mask] == expected_tokens
    assert kept_segments(method.segment_mask) == expected_segments
    result = exported(runner)
    assert result['kept_tokens'] == expected_tokens
    assert result['kept_segments'] == expected_segments
    assert result['token_scores'] == token_scores.tolist()


def test_shared_scope_keeps_the_top_of_the_mean_over_blocks(tiny_vtab, tmp_path):
    runner, hook = ready_runner(tmp_path, tiny_vtab, "prune_after=1, token_fraction=0.5, "
                                "segment_fraction=0.5, scope='shared'")
    method = runner.model.backbone.prompt
    # Every block's own top 2 is {0, 3} or {1, 2}; the mean's is {2, 3}
    # (0.425, 0.45, 0.5625, 0.55).
    token_scores = torch.tensor([[0.9, 0.1, 0.5, 0.6],
                                 [0.1, 0.9, 0.6, 0.5],
                                 [0.8, 0.0, 0.4, 0.7],
                                 [0.0, 0.8, 0.75, 0.4]])
    # Segment means over blocks for tokens 2, 3: [5, 1, 7, 3], [2, 8, 4, 6] (keep [0, 2], [1, 3]);
    # each block adds or subtracts a swing that reorders its own ranking.
    mean = torch.tensor([[5., 1., 7., 3.], [2., 8., 4., 6.]])
    swing = torch.tensor([[-10., 10., -10., 10.], [10., -10., 10., -10.]])
    segment_scores = torch.full((4, 4, 4), 100.)
    for block, sign in enumerate([1, 1, -1, -1]):
        segment_scores[block, 2:] = mean + sign * swing
    give_scores(hook, token_scores, segment_scores)
    hook.prune_and_rewind(runner)

    assert [row.nonzero().flatten().tolist() for row in method.token_mask] == [[2, 3]] * 4
    assert kept_segments(method.segment_mask) == [[[], [], [0, 2], [1, 3]]] * 4
    assert exported(runner)['kept_segments'] == [[[], [], [0, 2], [1, 3]]] * 4


# -- rewinding and timing -----------------------------------------------------------------------
def test_reinit_rewind_gives_fresh_prompts_and_the_start_head(tiny_vtab, tmp_path):
    runner, hook = ready_runner(tmp_path, tiny_vtab, "prune_after=1, rewind='reinit'")
    model, method = runner.model, runner.model.backbone.prompt
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert {'backbone.prompt.prompts', 'backbone.prompt.kv_prompts', 'head.fc.weight'} <= set(start)
    with torch.no_grad():  # stands in for stage 1's training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    give_scores(hook, torch.arange(16.).view(4, 4), None)
    hook.prune_and_rewind(runner)

    params = dict(model.named_parameters())
    for name in ('head.fc.weight', 'head.fc.bias'):
        torch.testing.assert_close(params[name], start[name], rtol=0, atol=0)
    for name in ('backbone.prompt.prompts', 'backbone.prompt.kv_prompts'):
        assert not torch.isclose(params[name], start[name]).any(), name
        assert not torch.isclose(params[name], trained[name]).any(), name
    # VPT's uniform init: bound sqrt(6 / (3 * patch^2 + D)) with patch 8, D 64.
    bound = math.sqrt(6 / (3 * 8 * 8 + 64))
    prompts = params['backbone.prompt.prompts']
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    assert method.token_mask.tolist() == [[0., 0., 1., 1.]] * 4  # masks stay as pruned


def test_iteration_based_pruning_runs_after_prune_after_iterations(tiny_vtab, tmp_path):
    # 64 images in batches of 32: 2 iterations an epoch, so iteration 3 falls in epoch 2.
    config = pruning_config(tmp_path, 'prune_after=3, by_epoch=False, token_fraction=0.5',
                            batch_size=32,
                            extra="train_cfg = dict(max_epochs=2, val_interval=10)\n")
    runner = make_runner(config, tmp_path / 'work', tiny_vtab)
    hook = pruning_hook(runner)
    calls, prune = [], hook.prune_and_rewind

    def recorded(runner):
        calls.append((runner.iter, runner.epoch))
        prune(runner)
    hook.prune_and_rewind = recorded
    runner.train()
    assert calls == [(2, 1)]  # once, after the 3rd iteration (0-based 2), in the 2nd epoch
    assert runner.model.backbone.prompt.token_mask.sum(1).tolist() == [2.] * 4


# -- two processes (gloo) -------------------------------------------------------------------
@pytest.mark.tools
def test_two_process_pruning_prunes_the_same_tokens_on_every_rank(tiny_vtab, tmp_path, monkeypatch):
    config = tmp_path / 'prune_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=6, "
        "num_kv_tokens=1, num_segments=4)))\n"
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook'), dict(type='mmvpt.PromptPruningHook', "
        "prune_after=1, token_fraction=0.5, segment_fraction=0.25)]\n"
        "train_cfg = dict(max_epochs=2)\n")
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', str(tmp_path), '--no-validate',
             '--cfg-options', *data_options(tiny_vtab))
    ranks = [torch.load(osp.join(str(tmp_path), f'params_after_rank{r}.pth')) for r in (0, 1)]
    for name in ('backbone.prompt.token_mask', 'backbone.prompt.segment_mask'):
        masks = [r['buffers'][name] for r in ranks]
        assert torch.equal(masks[0], masks[1])
        assert 0 < masks[0].sum() < masks[0].numel()  # something pruned, something kept
    assert ranks[0]['buffers']['backbone.prompt.token_mask'].sum(1).tolist() == [3.] * 4
    assert osp.isfile(osp.join(str(tmp_path), 'prompt_pruning.json'))


@pytest.mark.tools
def test_two_process_pruning_scores_are_the_mean_over_both_ranks(tiny_vtab, tmp_path, monkeypatch):
    """Rank r scores on its own shard (images r, r + 2, ...); the scores written and the masks
    must come from the mean of both ranks' scores, recomputed here in one process from the
    weights both ranks had when they scored. (DDP would make the masks agree anyway, from rank
    0's scores alone, at the next forward: this run ends before one.)"""
    config = tmp_path / 'prune_mean_config.py'
    config.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=4, "
        "num_kv_tokens=1, num_segments=4, dropout=0.)))\n"
        "custom_imports = dict(imports=['mmvpt', 'tests.helpers.dump_params_hook', "
        "'tests.helpers.dump_before_pruning_hook'])\n"
        "custom_hooks = [dict(type='DumpParamsHook'), dict(type='DumpBeforePruningHook', epoch=1), "
        "dict(type='mmvpt.PromptPruningHook', prune_after=1, token_fraction=0.5, "
        "segment_fraction=0.5)]\n"
        # Not shuffled: rank r's 2 batches of 16 are images r, r + 2, ... in order.
        "train_dataloader = dict(batch_size=16, sampler=dict(shuffle=False))\n"
        "train_cfg = dict(max_epochs=1)\n")
    work_dir = str(tmp_path / 'work')
    monkeypatch.setenv('PORT', str(free_port()))
    run_tool('dist_train.sh', str(config), '2', '--work-dir', work_dir, '--no-validate',
             '--cfg-options', *data_options(tiny_vtab))

    scored = [torch.load(osp.join(work_dir, f'before_pruning_rank{r}.pth')) for r in (0, 1)]
    for name, value in scored[0].items():
        assert torch.equal(scored[1][name], value), name
    after = [torch.load(osp.join(work_dir, f'params_after_rank{r}.pth'))['buffers'] for r in (0, 1)]
    with open(osp.join(work_dir, 'prompt_pruning.json')) as f:
        result = json.load(f)['prompts']['backbone.prompt']

    runner = make_runner(str(config), tmp_path / 'one_process', tiny_vtab)
    model, method = runner.model, runner.model.backbone.prompt
    model.load_state_dict(scored[0])
    dataset = runner.train_dataloader.dataset
    shards = [batches_of(dataset, range(rank, len(dataset), 2), 16) for rank in (0, 1)]
    assert len(dataset) == 64 and [len(s) for s in shards] == [2, 2]

    def close(got, want):
        torch.testing.assert_close(torch.tensor(got), want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())

    def differ(a, b):
        assert (a - b).abs().max() > 0.05 * b.abs().max()

    per_rank = [reference_scores(model, shard)[0] for shard in shards]
    token_scores = (per_rank[0] + per_rank[1]) / 2
    differ(per_rank[0], token_scores)  # rank 0's scores alone would be told apart
    close(result['token_scores'], token_scores)
    ranked = token_scores.sort(-1, descending=True)
    assert (ranked.values[:, 1] - ranked.values[:, 2] > 1e-3 * token_scores.max()).all()
    top = torch.zeros(4, 4).scatter_(-1, ranked.indices[:, :2], 1.)
    for buffers in after:
        assert torch.equal(buffers['backbone.prompt.token_mask'], top)

    with torch.no_grad():  # segments are scored on the token-pruned model
        method.token_mask.copy_(top)
    per_rank = [reference_scores(model, shard)[1] for shard in shards]
    segment_scores = (per_rank[0] + per_rank[1]) / 2
    differ(per_rank[0], segment_scores)
    close(result['segment_scores'], segment_scores)
    segment_masks = [buffers['backbone.prompt.segment_mask'] for buffers in after]
    assert torch.equal(segment_masks[0], segment_masks[1])
