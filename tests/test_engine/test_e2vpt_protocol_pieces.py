"""The pieces of E²VPT's official pruning protocol (mmvpt.engine.e2vpt_pruning): candidate
counts, masks and the choice of a candidate against the official loops re-stated
(tests/helpers/e2vpt_official.py); the importance scores against gradients taken by hand; the
learnable gates of E2VPT(learn_masks=True) against the official formula; PromptMaskHook; and
tools/analysis/prompt_importance.py."""
import itertools
import json
import os.path as osp
import random
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmvpt.engine.e2vpt_pruning import (
    MIN_PIECES,
    MIN_TOKENS,
    OFFICIAL_FRACTIONS,
    best_candidate,
    candidate_counts,
    importance_scores,
    piece_mask_for,
    token_mask_for,
)
from mmvpt.engine.hooks import PromptMaskHook
from mmvpt.utils import load_local_checkpoint, parameter_report

from tests.conftest import DEMO_CONFIG, ROOT, data_options, pretrained_line, tool_env
from tests.helpers import e2vpt_official as official
from tests.helpers.pruning_reference import batches_of, reference_scores
from tests.helpers.runners import make_runner
from tests.helpers.tiny_models import build, peaked
from tests.helpers.vit_reference import assert_forward_equals, tokens_reference

# -- candidate counts -----------------------------------------------------------------------------
PERCENT_LISTS = [official.OFFICIAL_PERCENTS, [30, 70], [70, 30, 95], [25, 50, 75],
                 [5, 15, 33, 66, 99], [90, 10], [29, 57]]


@pytest.mark.parametrize('total,minimum', [(1, MIN_TOKENS), (5, MIN_TOKENS), (10, MIN_TOKENS),
                                           (32, MIN_TOKENS), (8, MIN_PIECES), (16, MIN_PIECES)])
@pytest.mark.parametrize('percents', PERCENT_LISTS)
def test_candidate_counts_equal_the_official_sequence(total, minimum, percents):
    fractions = [p / 100 for p in percents]
    expected = official.mask_sequence(total, percents, minimum)
    assert candidate_counts(total, fractions, minimum) == expected


def test_candidate_counts_known_answers():
    assert OFFICIAL_FRACTIONS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert candidate_counts(10, OFFICIAL_FRACTIONS, MIN_TOKENS) == list(range(1, 10))
    assert candidate_counts(5, OFFICIAL_FRACTIONS, MIN_TOKENS) == [0, 1, 2, 3, 4]
    assert candidate_counts(32, OFFICIAL_FRACTIONS, MIN_TOKENS) == [3, 6, 9, 12, 16, 19, 22, 25, 28]
    assert candidate_counts(1, OFFICIAL_FRACTIONS, MIN_TOKENS) == [0]
    assert candidate_counts(16, OFFICIAL_FRACTIONS, MIN_PIECES) == [1, 3, 4, 6, 8, 9, 11, 12]
    # 100 x 0.29 and 100 x 0.57 fall just below 29 and 57 in floats; the official
    # int(100 * 29 / 100) does not
    assert int(100 * 0.29) == 28 and int(100 * 0.57) == 56
    assert candidate_counts(100, [0.29, 0.57], 1) == [29, 57]
    # clipped to total - minimum, and the later fractions dropped: 0.2 never counts
    assert candidate_counts(16, [0.9, 0.2], MIN_PIECES) == [12]


def test_candidate_counts_bad_input():
    for fractions in ([0.], [1.], [0.5, 1.5], [-0.1]):
        with pytest.raises(ValueError, match='must lie in'):
            candidate_counts(10, fractions, 1)
    with pytest.raises(ValueError, match='no fractions'):
        candidate_counts(10, [], 1)
    with pytest.raises(ValueError, match='minimum=5'):
        candidate_counts(4, [0.5], 5)
    with pytest.raises(ValueError, match='total=0'):
        candidate_counts(0, [0.5], 0)


# -- masks ----------------------------------------------------------------------------------------
def score_tensors(shape):
    """Random scores, and scores with many ties (rounded to halves)."""
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        scores = torch.randn(shape, generator=generator)
        yield scores
        yield (scores * 2).round() / 2


def masks_of_steps(scores, counts):
    """The official cumulative masks for ``counts`` (sorted), taking the steps between them."""
    steps = [counts[0]] + [b - a for a, b in zip(counts, counts[1:])]
    return official.masked_in_order(scores, steps)


@pytest.mark.parametrize('num_tokens', [5, 10, 32])
def test_token_masks_equal_the_official_choice(num_tokens):
    counts = candidate_counts(num_tokens, OFFICIAL_FRACTIONS, MIN_TOKENS)
    tied = 0
    for scores in score_tensors((num_tokens, )):
        values = scores.tolist()
        tied += len(set(values)) < len(values)
        for count in range(num_tokens + 1):
            assert token_mask_for(scores, count).tolist() == official.token_mask(values, count)
        # the official steps give nested sets: each the first ``count`` of one order
        for count, masked in zip(counts, masks_of_steps(values, counts)):
            mask = token_mask_for(scores, count)
            assert (mask == 0).nonzero().flatten().tolist() == sorted(masked)
    assert tied


def test_ties_go_to_the_lower_index_first():
    scores = torch.tensor([0.5, 0., 0., 0., -1.])
    assert token_mask_for(scores, 2).tolist() == [1., 0., 1., 1., 0.]
    assert token_mask_for(scores, 3).tolist() == [1., 0., 0., 1., 0.]
    pieces = torch.tensor([[0., 0., 0., 0.], [1., 0., 1., 0.]])
    assert piece_mask_for(pieces, 1).tolist() == [[0., 1., 1., 1.], [1., 0., 1., 1.]]
    assert piece_mask_for(pieces, 3).tolist() == [[0., 0., 0., 1.], [0., 0., 1., 0.]]


@pytest.mark.parametrize('num_tokens,num_pieces', [(5, 16), (10, 16), (4, 8)])
def test_piece_masks_equal_the_official_choice(num_tokens, num_pieces):
    tied = 0
    for scores in score_tensors((num_tokens, num_pieces)):
        rows = scores.tolist()
        tied += any(len(set(row)) < len(row) for row in rows)
        for count in range(num_pieces + 1):
            assert piece_mask_for(scores, count).tolist() == official.piece_mask(rows, count)
    assert tied


def test_mask_bad_input():
    with pytest.raises(ValueError, match=r'token count=5: an int in \[0, 4\]'):
        token_mask_for(torch.zeros(4), 5)
    with pytest.raises(ValueError, match='token count=-1'):
        token_mask_for(torch.zeros(4), -1)
    with pytest.raises(ValueError, match=r'piece count=9: an int in \[0, 8\]'):
        piece_mask_for(torch.zeros(4, 8), 9)
    with pytest.raises(ValueError, match='NaN'):
        token_mask_for(torch.tensor([0., float('nan')]), 1)
    with pytest.raises(ValueError, match='2-d'):
        piece_mask_for(torch.zeros(4), 1)


# -- the choice of a candidate ------------------------------------------------------------------
def random_results(rng, num_tokens=(0, 1, 2, 3), num_pieces=(1, 3, 4)):
    """Candidate results with few distinct scores (ties)."""
    return [dict(tokens=t, pieces=s, score=rng.choice([0.5, 0.625, 0.75]))
            for t, s in itertools.product(num_tokens, num_pieces) if rng.random() < 0.7]


def test_best_candidate_equals_the_official_choice_where_that_is_deterministic():
    rng = random.Random(0)
    compared = 0
    for _ in range(200):
        results = random_results(rng)
        if not results:
            continue
        top = max(r['score'] for r in results)
        top_tokens = max(r['tokens'] for r in results if r['score'] == top)
        best = best_candidate(results)
        for _ in range(4):  # any order: the same winner
            rng.shuffle(results)
            assert best_candidate(results) is best
        assert (best['score'], best['tokens']) == (top, top_tokens)
        # Among the top score's largest T, the official winner is the first in its order;
        # with one such candidate that is deterministic
        if sum(r['score'] == top and r['tokens'] == top_tokens for r in results) == 1:
            assert official.find_best(results) == (best['tokens'], best['pieces'])
            compared += 1
    assert compared > 20


def test_best_candidate_tie_rules():
    results = [dict(tokens=1, pieces=12, score=0.8), dict(tokens=3, pieces=1, score=0.8),
               dict(tokens=2, pieces=4, score=0.8), dict(tokens=9, pieces=12, score=0.75)]
    assert best_candidate(results) == dict(tokens=3, pieces=1, score=0.8)  # larger T
    results += [dict(tokens=3, pieces=6, score=0.8), dict(tokens=3, pieces=3, score=0.8)]
    for order in itertools.permutations(results[-3:]):
        assert best_candidate(results[:-3] + list(order)) == dict(tokens=3, pieces=6, score=0.8)
    # a higher score wins over any count
    assert best_candidate(results + [dict(tokens=0, pieces=1, score=0.81)])['tokens'] == 0
    # a NaN (diverged) run loses wherever it stands
    nan = dict(tokens=9, pieces=12, score=float('nan'))
    assert best_candidate([nan, results[3]]) is results[3]
    assert best_candidate([results[3], nan]) is results[3]
    with pytest.raises(ValueError, match='no results'):
        best_candidate([])


# -- importance scores ----------------------------------------------------------------------------
NUM_TRAIN, BATCH = 64, 16  # tiny_vtab's training images; 4 batches


def scoring_config(tmp_path, prompt_options='', extra=''):
    """The demo's tiny ViT (4 blocks, width 64), frozen, with 4 E²VPT prompts of 4 interleaved
    pieces and prompt dropout 0.1 (off while scoring), and a training loader that does not
    shuffle."""
    path = tmp_path / f'cfg_{uuid.uuid4().hex[:6]}.py'
    path.write_text(
        f"_base_ = [{DEMO_CONFIG!r}]\n"
        "model = dict(backbone=dict(frozen=True, prompt=dict(type='mmvpt.E2VPT', num_tokens=4, "
        "num_kv_tokens=2, num_segments=4, segment_layout='interleaved', dropout=0.1, "
        f"prune_mode='mask'{prompt_options})))\n"
        f"train_dataloader = dict(batch_size={BATCH}, sampler=dict(shuffle=False))\n"
        "train_cfg = dict(max_epochs=1, val_interval=100)\n"
        "randomness = dict(seed=0, deterministic=True)\n" + extra)
    return str(path)


def scoring_model(tmp_path, data_root, prompt_options=''):
    runner = make_runner(scoring_config(tmp_path, prompt_options), tmp_path / 'work', data_root)
    return runner.model, batches_of(runner.train_dataloader.dataset, range(NUM_TRAIN), BATCH)


def assert_scores_equal(got, expected):
    got = torch.as_tensor(got, dtype=expected.dtype)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def assert_clearly_different(a, b):
    assert (a - b).abs().max() > 0.05 * b.abs().max()


def test_scores_without_gates_are_the_mask_gradients_summed_over_layers(tiny_vtab, tmp_path):
    model, batches = scoring_model(tmp_path, tiny_vtab)
    method = model.backbone.prompt
    model.train()  # scoring turns prompt dropout off, and gives the mode back
    scores = importance_scores(model, batches)
    assert model.training and not method.token_mask.requires_grad
    assert not method.segment_mask.requires_grad
    tokens, pieces = reference_scores(model, batches, signed=True)  # (L, P), (L, P, R)
    assert scores['batches'] == 4
    assert scores['token_scores'].shape == (4, ) and scores['piece_scores'].shape == (4, 4)
    assert (tokens.sum(0) < 0).any() and (tokens.sum(0) > 0).any()  # signed: |.| would differ
    assert_scores_equal(scores['token_scores'], tokens.sum(0))
    assert_scores_equal(scores['piece_scores'], pieces.sum(0))
    assert_clearly_different(tokens.sum(0), tokens[-1])  # every layer counts

    first = importance_scores(model, batches, max_batches=2)
    tokens_2, pieces_2 = reference_scores(model, batches[:2], signed=True)
    assert first['batches'] == 2
    assert_scores_equal(first['token_scores'], tokens_2.sum(0))
    assert_scores_equal(first['piece_scores'], pieces_2.sum(0))
    assert_clearly_different(tokens_2.sum(0), tokens.sum(0))


def gated_prompts(method, token_gate, segment_gate):
    """The official masking by hand: every layer's prompts times the piece gate tiled over the
    dims (``repeat``: dim d in piece d % R), then times the token gate."""
    def prompts(i):
        D = method.prompts.shape[-1]
        tiled = segment_gate.repeat(1, D // segment_gate.shape[1])
        return method.prompts[i] * tiled * token_gate[:, None]
    return prompts


def gate_gradients(model, batch, token_gate, segment_gate):
    """dL/d gates of one batch through the re-stated ViT (tests/helpers/vit_reference.py),
    the gates as leaves at the given values."""
    method = model.backbone.prompt
    token_gate = token_gate.clone().requires_grad_(True)
    segment_gate = segment_gate.clone().requires_grad_(True)
    data = model.data_preprocessor(batch, True)
    features = tokens_reference(model.backbone, data['inputs'],
                                gated_prompts(method, token_gate, segment_gate),
                                kv=lambda i: (method.kv_prompts[i], method.kv_prompts[i]))
    labels = torch.cat([sample.gt_label for sample in data['data_samples']])
    loss = F.cross_entropy(model.head.fc(features), labels)
    return torch.autograd.grad(loss, [token_gate, segment_gate])


def test_scores_with_gates_are_the_gate_gradients(tiny_vtab, tmp_path):
    model, batches = scoring_model(tmp_path, tiny_vtab, ', learn_masks=True')
    method = model.backbone.prompt
    with torch.no_grad():  # as trained: away from ones
        method.token_gate.copy_(torch.tensor([1.2, 0.7, 0.9, 1.4]))
        method.segment_gate.uniform_(0.5, 1.5)
    scores = importance_scores(model, batches)
    grads = [gate_gradients(model, batch, method.token_gate.detach(), method.segment_gate.detach())
             for batch in batches]
    expected_tokens = sum(g[0] for g in grads) / 4
    expected_pieces = sum(g[1] for g in grads) / 4
    assert_scores_equal(scores['token_scores'], expected_tokens)
    assert_scores_equal(scores['piece_scores'], expected_pieces)
    # the gates are left as trained: trainable, values and .grad untouched
    assert method.token_gate.requires_grad and method.token_gate.grad is None
    assert method.token_gate.tolist() == pytest.approx([1.2, 0.7, 0.9, 1.4])
    # taken at ones, they would differ
    at_ones, _ = gate_gradients(model, batches[0], torch.ones(4), torch.ones(4, 4))
    assert_clearly_different(at_ones, grads[0][0])


def test_gate_scores_at_ones_equal_the_mask_scores(tiny_vtab, tmp_path):
    gated, batches = scoring_model(tmp_path, tiny_vtab, ', learn_masks=True')
    plain, _ = scoring_model(tmp_path, tiny_vtab)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if '_gate' not in k})
    got, want = importance_scores(gated, batches[:2]), importance_scores(plain, batches[:2])
    assert_scores_equal(got['token_scores'], want['token_scores'])
    assert_scores_equal(got['piece_scores'], want['piece_scores'])


def test_scores_need_an_e2vpt_with_visual_prompts():
    for prompt in (dict(type='mmvpt.CVPT', num_tokens=2),
                   dict(type='mmvpt.E2VPT', num_tokens=0, num_kv_tokens=2)):
        with pytest.raises(ValueError, match=r'needs a model with one mmvpt\.E2VPT with visual'):
            importance_scores(build(prompt), [])


# -- the learnable gates --------------------------------------------------------------------------
L, D = 3, 32  # the tiny ViT's blocks and width
GATED = dict(type='mmvpt.E2VPT', num_tokens=4, num_kv_tokens=2, num_segments=4,
             segment_layout='interleaved', learn_masks=True)


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def test_gates_are_trainable_counted_and_start_at_ones(images):
    model = peaked(GATED)
    plain = peaked({**GATED, 'learn_masks': False})
    m = model.prompt
    assert isinstance(m.token_gate, torch.nn.Parameter) and m.token_gate.requires_grad
    assert m.token_gate.tolist() == [1.] * 4 and m.segment_gate.tolist() == [[1.] * 4] * 4
    assert plain.prompt.token_gate is None and 'learn_masks=True' in repr(m)
    # the same weights otherwise, and at ones the same output
    own = plain.state_dict()
    gates = {'prompt.token_gate', 'prompt.segment_gate'}
    assert set(model.state_dict()) - set(own) == gates
    for key, value in own.items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], plain(images)[0], rtol=0, atol=0)
    assert parameter_report(model)['tuned'] - parameter_report(plain)['tuned'] == 4 + 4 * 4
    with torch.no_grad():
        m.token_gate.mul_(0.5)
        m.segment_gate.add_(0.3)
    m.reset_parameters()
    assert m.token_gate.tolist() == [1.] * 4 and m.segment_gate.tolist() == [[1.] * 4] * 4


def test_gates_multiply_every_layers_prompts_as_the_official_code(images):
    model = peaked(GATED)
    m = model.prompt
    token_gate, segment_gate = torch.tensor([1.5, 0., 0.5, 1.]), torch.rand(4, 4) + 0.5
    with torch.no_grad():
        before = model(images)[0]
        m.token_gate.copy_(token_gate)
        m.segment_gate.copy_(segment_gate)
    expected = tokens_reference(model, images, gated_prompts(m, token_gate, segment_gate),
                                kv=lambda i: (m.kv_prompts[i], m.kv_prompts[i]))
    assert_forward_equals(model, expected, images)
    assert (expected - before).abs().max() > 1e-3
    # the gradient reaches both gates; a piece of a token gated to 0 has none
    model(images)[0].pow(2).sum().backward()
    assert (m.token_gate.grad != 0).all()
    assert (m.segment_gate.grad[[0, 2, 3]] != 0).all() and (m.segment_gate.grad[1] == 0).all()


def test_gates_on_top_of_removed_tokens(images):
    model = peaked({**GATED, 'prune_mode': 'remove', 'segment_layout': 'contiguous'})
    m = model.prompt
    token_gate, segment_gate = torch.tensor([1.5, 2., 0.5, 1.]), torch.rand(4, 4) + 0.5
    with torch.no_grad():
        m.token_gate.copy_(token_gate)
        m.segment_gate.copy_(segment_gate)
        m.token_mask[1, 0] = 0
        m.segment_mask[2, 3, 1] = 0
    m.masks_changed()

    def prompts(i):
        segments = segment_gate * m.segment_mask[i]
        p = m.prompts[i] * segments.repeat_interleave(D // 4, dim=-1) * token_gate[:, None]
        return p[m.token_mask[i].bool()]
    expected = tokens_reference(model, images, prompts,
                                kv=lambda i: (m.kv_prompts[i], m.kv_prompts[i]))
    assert_forward_equals(model, expected, images)


def test_stacked_tasks_each_with_their_gates(images):
    tasks = []
    for seed in (1, 2):
        model = peaked(GATED)
        with torch.no_grad():
            torch.manual_seed(seed)
            model.prompt.token_gate.uniform_(0.5, 1.5)
            model.prompt.segment_gate.uniform_(0.5, 1.5)
            model.prompt.prompts.normal_(0, 0.1)
        tasks.append(model)
    with torch.no_grad():
        alone = [model(images)[0] for model in tasks]
    served = tasks[0]
    states = {f'task{i}': t.prompt.state_dict() for i, t in enumerate(tasks)}
    served.prompt = served.prompt.stacked(states)
    with torch.no_grad():
        out = served(images, tasks=torch.tensor([1, 0]))[0]
    torch.testing.assert_close(out[0], alone[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], alone[0][1], rtol=0, atol=1e-5)
    assert (alone[0] - alone[1]).abs().max() > 1e-3


# -- PromptMaskHook -------------------------------------------------------------------------------
TOKEN_SCORES = [0.3, -0.2, 0.3, 0.1]  # ascending, ties by index: 1, 3, 0, 2
PIECE_SCORES = [[0., 0., -1., 2.], [5., 4., 3., 2.], [1., 1., 1., 1.], [-3., 0., -3., 0.]]


def write_scores(path, token_scores=TOKEN_SCORES, piece_scores=PIECE_SCORES, **extra):
    path.write_text(json.dumps(dict(token_scores=token_scores, piece_scores=piece_scores,
                                    segment_layout='interleaved', **extra)))
    return str(path)


def hook_runner(tmp_path, **options):
    prompt = {**GATED, 'learn_masks': False, 'prune_mode': 'mask', **options}
    return SimpleNamespace(model=build(prompt), work_dir=str(tmp_path))


@pytest.mark.parametrize('tokens,pieces,masked_tokens,masked_pieces', [
    (2, 1, [1, 3], [[2], [3], [0], [0]]),
    (3, 2, [0, 1, 3], [[0, 2], [2, 3], [0, 1], [0, 2]]),
    (0, 4, [], [[0, 1, 2, 3]] * 4),
    (3, 0, [0, 1, 3], [[]] * 4),
])
def test_mask_hook_sets_every_layers_masks(tmp_path, tokens, pieces, masked_tokens, masked_pieces):
    scores = write_scores(tmp_path / 'scores.json')
    runner = hook_runner(tmp_path)
    PromptMaskHook(scores, tokens, pieces).before_train(runner)
    m = runner.model.prompt
    for layer in range(L):
        assert (m.token_mask[layer] == 0).nonzero().flatten().tolist() == masked_tokens
        pieces_of = [(row == 0).nonzero().flatten().tolist() for row in m.segment_mask[layer]]
        assert pieces_of == masked_pieces
    kept, _, tokens_pruned, pieces_pruned = m._mask_state  # the forward's view: read anew
    assert (tokens_pruned, pieces_pruned) == (tokens > 0, pieces > 0)
    with open(tmp_path / 'prompt_mask.json') as f:
        written = json.load(f)
    assert written == dict(scores=scores, tokens=tokens, pieces=pieces,
                           masked_tokens=masked_tokens, masked_pieces=masked_pieces)


def test_mask_hook_runs_before_training_and_the_masks_stay(tiny_vtab, tmp_path):
    scores = write_scores(tmp_path / 'scores.json')
    config = scoring_config(tmp_path, extra=(
        f"custom_hooks = [dict(type='mmvpt.PromptMaskHook', scores={scores!r}, tokens=2, "
        "pieces=1)]\n"
        "default_hooks = dict(checkpoint=dict(interval=1))\n"))
    runner = make_runner(config, tmp_path / 'work', tiny_vtab)
    runner.train()
    m = runner.model.backbone.prompt
    assert m.token_mask.tolist() == [[1., 0., 1., 0.]] * 4
    assert (m.segment_mask == 0).sum().item() == 4 * 4  # one piece of each prompt per block
    assert osp.isfile(tmp_path / 'work' / 'prompt_mask.json')
    saved = load_local_checkpoint(str(tmp_path / 'work' / 'epoch_1.pth'))['state_dict']
    assert torch.equal(saved['backbone.prompt.token_mask'], m.token_mask)
    # the parameter report leaves the masked elements out: per block 2 prompts, and 1 of the
    # 4 pieces (16 dims) of the 2 others
    assert m.num_pruned_parameters() == 4 * (2 * 64 + 2 * 16)


def test_mask_hook_bad_input(tmp_path):
    scores = write_scores(tmp_path / 'scores.json')
    for tokens, pieces, name in ((-1, 0, 'tokens=-1'), (0, -2, 'pieces=-2'),
                                 (True, 0, 'tokens=True'), (1.0, 0, 'tokens=1.0')):
        with pytest.raises(ValueError, match=name):
            PromptMaskHook(scores, tokens, pieces)
    with pytest.raises(ValueError, match=r'tokens=4: at least one .* \[0, 3\]'):
        PromptMaskHook(scores, 4, 0).before_train(hook_runner(tmp_path))
    with pytest.raises(ValueError, match=r'pieces=5: a prompt has 4 pieces'):
        PromptMaskHook(scores, 0, 5).before_train(hook_runner(tmp_path))
    with pytest.raises(ValueError, match='4 prompts of 4 pieces, the model has num_tokens=5'):
        PromptMaskHook(scores, 1, 1).before_train(hook_runner(tmp_path, num_tokens=5))
    with pytest.raises(ValueError, match='num_tokens=4, num_segments=8'):
        PromptMaskHook(scores, 1, 1).before_train(hook_runner(tmp_path, num_segments=8))
    contiguous = hook_runner(tmp_path, segment_layout='contiguous')
    with pytest.raises(ValueError, match="layout='interleaved', the model has 'contiguous'"):
        PromptMaskHook(scores, 1, 1).before_train(contiguous)
    with pytest.raises(ValueError, match='set model.backbone.prompt.learn_masks=False'):
        PromptMaskHook(scores, 1, 1).before_train(hook_runner(tmp_path, learn_masks=True))
    cvpt = SimpleNamespace(model=build(dict(type='mmvpt.CVPT', num_tokens=2)),
                           work_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"PromptMaskHook needs .*mmvpt\.E2VPT.*\['CVPT'\]"):
        PromptMaskHook(scores, 1, 1).before_train(cvpt)
    with pytest.raises(FileNotFoundError, match='prompt_importance.py writes it'):
        PromptMaskHook(str(tmp_path / 'none.json'), 1, 1).before_train(hook_runner(tmp_path))
    bad = write_scores(tmp_path / 'bad.json', piece_scores=[[0.] * 4] * 3)
    with pytest.raises(ValueError, match=r'\(4,\) and piece scores \(3, 4\)'):
        PromptMaskHook(bad, 1, 1).before_train(hook_runner(tmp_path))
    assert not osp.exists(tmp_path / 'prompt_mask.json')  # nothing written on an error


# -- tools/analysis/prompt_importance.py --------------------------------------------------------
@pytest.mark.tools
def test_tool_writes_the_scores_of_a_tuned_only_checkpoint(tiny_vtab, demo_backbone, tmp_path):
    config = scoring_config(tmp_path, ', learn_masks=True', extra=(
        pretrained_line(demo_backbone)
        + "custom_hooks = [dict(type='mmvpt.TunedCheckpointHook')]\n"
        + "default_hooks = dict(checkpoint=dict(interval=1))\n"))
    runner = make_runner(config, tmp_path / 'train', tiny_vtab)
    runner.train()
    checkpoint = str(tmp_path / 'train' / 'epoch_1.pth')
    state = load_local_checkpoint(checkpoint)['state_dict']
    assert 'backbone.prompt.token_gate' in state and not any('.vit.' in k for k in state)
    assert state['backbone.prompt.token_gate'].tolist() != [1.] * 4  # trained

    # from another working directory, with relative paths
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    cmd = [sys.executable, osp.join(ROOT, 'tools/analysis/prompt_importance.py'),
           osp.relpath(config, cwd), osp.relpath(checkpoint, cwd), '--out', 'scores.json',
           '--work-dir', 'log', '--cfg-options', *data_options(tiny_vtab)]
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'scores.json: scores of 4 prompts x 4 pieces over 4 batches' in proc.stdout
    with open(cwd / 'scores.json') as f:
        payload = json.load(f)
    assert payload['num_tokens'] == 4 and payload['num_pieces'] == 4 and payload['batches'] == 4
    assert payload['checkpoint'] == checkpoint and payload['config'] == config
    assert payload['segment_layout'] == 'interleaved'
    expected = importance_scores(runner.model, batches_of(runner.train_dataloader.dataset,
                                                          range(NUM_TRAIN), BATCH))
    assert_scores_equal(payload['token_scores'], expected['token_scores'])
    assert_scores_equal(payload['piece_scores'], expected['piece_scores'])

    # and the hook reads it
    runner = hook_runner(tmp_path)
    PromptMaskHook(str(cwd / 'scores.json'), 2, 3).before_train(runner)
    token_mask = token_mask_for(torch.tensor(payload['token_scores'], dtype=torch.float64), 2)
    assert torch.equal(runner.model.prompt.token_mask[0], token_mask)

    failed = subprocess.run(cmd[:3] + [str(tmp_path / 'none.pth'), '--out', 'x.json'], cwd=cwd,
                            env=tool_env(), capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1 and 'does not exist' in failed.stderr
