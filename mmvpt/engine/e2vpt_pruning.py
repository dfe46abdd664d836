"""E²VPT's pruning as the official code runs it, between training runs: the importance scores
of a trained model, the candidate counts, the masks of a candidate and the choice among the
candidates' results.

The official pipeline (ChengHan111/E2VPT) trains with two learnable gates on the visual prompts
(``E2VPT(learn_masks=True)``), scores them once over the training split, then trains every
(token count T, piece count S) candidate afresh with fixed 0/1 masks (``prune_mode='mask'``,
:class:`mmvpt.PromptMaskHook`) and keeps the best. Here, a piece is what the method calls a
segment (R per prompt, 16 in the official code, interleaved dims). The differences from the
official code:

- candidates with the same validation accuracy and the same T: the official code keeps the one
  its file listing gave first (arbitrary); :func:`best_candidate` takes the larger S (more
  pruned, as its rule for T);
- scores from several processes are the mean of each process's mean (the official code runs one).

:class:`mmvpt.PromptPruningHook` prunes inside one run instead (its own rules); both share
:func:`mean_gradients`.
"""
import os.path as osp
from fractions import Fraction

import torch
from mmengine.dist import all_reduce

from mmvpt.models.prompts.e2vpt import E2VPT
from mmvpt.models.utils.tuned_state import prompt_methods

from .hooks.tuned_checkpoint_hook import unwrap

#: the official percents 10, 20, ..., 90 as fractions
OFFICIAL_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: tokens that stay at least (official MIN_NUMBER_CLS_TOKEN)
MIN_TOKENS = 1
#: pieces per token that stay at least (official MIN_NUMBER_CLS_TOKEN_PIECE)
MIN_PIECES = 4


# -- candidates ------------------------------------------------------------------------------
def candidate_counts(total, fractions, minimum):
    """The official candidate counts of ``total`` tokens (or pieces per token): per fraction
    in list order the count floor(total * fraction), clipped to ``total - minimum`` (and the
    later fractions dropped) once it would leave fewer than ``minimum``; the distinct counts,
    sorted. 10 tokens: 1..9; 5 tokens: 0..4; 16 pieces, minimum 4: 1, 3, 4, 6, 8, 9, 11, 12.

    The fractions are taken as their decimal text (0.7 is 7/10), so the floor is the official
    ``int(N * percent / 100)`` of the same percents, without float rounding."""
    if not isinstance(total, int) or total < 1:
        raise ValueError(f'candidate_counts total={total!r}: a positive int')
    if not isinstance(minimum, int) or not 0 <= minimum <= total:
        raise ValueError(f'candidate_counts minimum={minimum!r}: an int in [0, {total}]')
    if not fractions:
        raise ValueError('candidate_counts: no fractions')
    counts = []
    for fraction in fractions:
        exact = Fraction(str(fraction))
        if not 0 < exact < 1:
            raise ValueError(f'candidate_counts fraction {fraction!r}: must lie in (0, 1)')
        count = int(total * exact)
        if count > total - minimum:
            counts.append(total - minimum)
            break
        counts.append(count)
    return sorted(set(counts))


def _check_count(name, count, limit):
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= limit:
        raise ValueError(f'{name}={count!r}: an int in [0, {limit}]')


def _check_scores(name, scores, dim):
    if not torch.is_tensor(scores) or scores.dim() != dim:
        got = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
        raise ValueError(f'{name}: a {dim}-d tensor of scores, got {got}')
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f'{name}: the scores hold NaN or infinite values')


def token_mask_for(scores, count):
    """(P,) 0/1 mask that zeroes the ``count`` tokens of lowest signed score (``scores``
    (P,)); on a tie the lower index goes first, as Python's stable ``sorted`` does in the
    official code."""
    _check_scores('token scores', scores, 1)
    _check_count('token count', count, scores.shape[0])
    order = torch.sort(scores, stable=True).indices
    mask = torch.ones(scores.shape, dtype=torch.float)
    mask[order[:count].cpu()] = 0.
    return mask


def piece_mask_for(scores, count):
    """(P, R) 0/1 mask that zeroes, in every token (also the ones a token mask zeroes), the
    ``count`` pieces of lowest signed score (``scores`` (P, R)); ties as
    :func:`token_mask_for`."""
    _check_scores('piece scores', scores, 2)
    _check_count('piece count', count, scores.shape[1])
    order = torch.sort(scores, dim=-1, stable=True).indices[:, :count].cpu()
    return torch.ones(scores.shape, dtype=torch.float).scatter_(-1, order, 0.)


def best_candidate(results):
    """The winner among ``results`` (dicts with ``tokens``, ``pieces`` and ``score``, the
    last-epoch validation accuracy): the highest score; on a tie the larger token count (the
    official rule), then the larger piece count (ours; the official code keeps whichever its
    file listing gave first). A NaN score (a diverged run) ranks below every number, as in the
    official loop. The same winner for any order of ``results``."""
    if not results:
        raise ValueError('best_candidate: no results')

    def key(result):
        score = float(result['score'])
        return (score if score == score else float('-inf'), result['tokens'], result['pieces'])
    return max(results, key=key)


# -- scores ------------------------------------------------------------------------------------
def mean_gradients(model, dataloader, tensors, max_batches=None, absolute=False):
    """The mean over the batches of ``dataloader`` of dL/dt (or |dL/dt| if ``absolute``) for
    every t in ``tensors`` (masks or gates of the model), then the mean over ranks. L is the
    batch's training loss as ``model`` computes it (``mode='loss'``, summed by
    ``parse_losses``: the batch-mean cross-entropy for a classifier), with the model in eval
    mode (no prompt dropout); one pass over at most ``max_batches`` batches. Parameter
    gradients (``.grad``) are left as they are.

    Returns (the means, like ``tensors``; the batches this rank took)."""
    model = unwrap(model)
    was_training = model.training
    needed_grad = [t.requires_grad for t in tensors]
    model.eval()
    sums = [torch.zeros_like(t) for t in tensors]
    batches = 0
    for t in tensors:
        t.requires_grad_(True)
    try:
        for i, data in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            data = model.data_preprocessor(data, True)
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            grads = torch.autograd.grad(loss, tensors)
            for total, grad in zip(sums, grads):
                total += grad.abs() if absolute else grad
            batches += 1
    finally:
        for t, needed in zip(tensors, needed_grad):
            t.requires_grad_(needed)
        model.train(was_training)
    means = []
    for total in sums:
        total /= max(batches, 1)
        all_reduce(total, op='mean')
        means.append(total.detach())
    return means, batches


def e2vpt_of(model, purpose):
    """The model's one E²VPT with visual prompts; a ValueError naming ``purpose`` and what
    the model has otherwise."""
    methods = prompt_methods(unwrap(model))
    found = [m for _, m in methods if isinstance(m, E2VPT) and m.prompts is not None]
    if len(found) != 1:
        names = [type(m).__name__ + ('(num_tokens=0)' if isinstance(m, E2VPT) else '')
                 for _, m in methods]
        raise ValueError(f'{purpose} needs a model with one mmvpt.E2VPT with visual prompts '
                         f'(num_tokens > 0); the model has {names or "no prompt method"}')
    return found[0]


def importance_scores(model, dataloader, max_batches=None):
    """The official importance scores (``calculate_importance``): the signed mean over one
    pass of ``dataloader`` (at most ``max_batches``) of the batch loss's gradient wrt the
    token gate and the piece gate (``E2VPT(learn_masks=True)``, at their trained values),
    mean over ranks (:func:`mean_gradients`). Without gates, wrt the masks of the prunable
    layers, summed over those layers: the gates' gradient had they been at ones.

    Returns ``dict(token_scores=(P,), piece_scores=(P, R), batches=int)``, on the CPU."""
    method = e2vpt_of(model, 'importance_scores')
    if method.token_gate is not None:
        (tokens, pieces), batches = mean_gradients(
            model, dataloader, [method.token_gate, method.segment_gate], max_batches)
    else:
        (tokens, pieces), batches = mean_gradients(
            model, dataloader, [method.token_mask, method.segment_mask], max_batches)
        tokens = tokens[method.prunable_layers].sum(0)
        pieces = pieces[method.prunable_layers].sum(0)
    return dict(token_scores=tokens.cpu(), piece_scores=pieces.cpu(), batches=batches)


def score_checkpoint(cfg, checkpoint, max_batches=None):
    """Builds MMEngine's runner of the prepared config ``cfg`` (``mmvpt.utils.
    prepare_config``), loads ``checkpoint`` into its model, strictly (a tuned-only checkpoint
    goes on the config's pretrained backbone; gates missing from a checkpoint trained
    without them fail), and scores it over the config's training dataloader
    (:func:`importance_scores`). Returns the payload of ``tools/analysis/
    prompt_importance.py``'s file: the scores as lists, ``batches``, ``num_tokens``,
    ``num_pieces``, ``segment_layout``, ``max_batches``, and the ``checkpoint`` and
    ``config`` paths."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    cfg.load_from, cfg.resume = None, False  # loaded below, after the runner is built
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    method = e2vpt_of(runner.model, 'prompt importance scoring')
    runner.load_checkpoint(checkpoint, strict=True)
    scores = importance_scores(runner.model, runner.train_dataloader, max_batches)
    return dict(token_scores=scores['token_scores'].tolist(),
                piece_scores=scores['piece_scores'].tolist(), batches=scores['batches'],
                num_tokens=method.num_tokens, num_pieces=method.num_segments,
                segment_layout=method.segment_layout, max_batches=max_batches,
                checkpoint=osp.abspath(checkpoint), config=osp.abspath(cfg.filename))
