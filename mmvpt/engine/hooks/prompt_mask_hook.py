"""Fixed E²VPT masks from importance scores: a rewind candidate or final run of the official
pruning protocol (:mod:`mmvpt.engine.e2vpt_pruning`)."""
import json
import os.path as osp

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmvpt.registry import HOOKS
from mmvpt.utils.atomic_io import atomic_write

from ..e2vpt_pruning import e2vpt_of, piece_mask_for, token_mask_for


def read_importance(path):
    """(token scores (P,), piece scores (P, R), the file's content) of a
    ``tools/analysis/prompt_importance.py`` file; float64, so the order of the written
    floats is kept exactly."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'PromptMaskHook scores={path!r}: no such file '
                                '(tools/analysis/prompt_importance.py writes it)')
    with open(path) as f:
        payload = json.load(f)
    try:
        tokens = torch.tensor(payload['token_scores'], dtype=torch.float64)
        pieces = torch.tensor(payload['piece_scores'], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f'{path}: not a prompt importance file (token_scores, piece_scores): '
                         f'{err}') from None
    if tokens.dim() != 1 or pieces.dim() != 2 or pieces.shape[0] != tokens.shape[0]:
        raise ValueError(f'{path}: token scores {tuple(tokens.shape)} and piece scores '
                         f'{tuple(pieces.shape)} are not (P,) and (P, R)')
    return tokens, pieces, payload


@HOOKS.register_module()
class PromptMaskHook(Hook):
    """Sets E²VPT's masks as the official code does for a (T, S) candidate: before training,
    every prunable layer's ``token_mask`` zeroes the ``tokens`` visual prompts of lowest
    score and its ``segment_mask`` the ``pieces`` lowest-scored pieces of every prompt
    (:func:`~mmvpt.engine.e2vpt_pruning.token_mask_for`,
    :func:`~mmvpt.engine.e2vpt_pruning.piece_mask_for`). The masks stay fixed while the
    freshly initialised prompts train; the official code zeroes the masked prompts and keeps
    them in the sequence (``prune_mode='mask'``). The masked tokens and pieces are written to
    ``<work_dir>/prompt_mask.json``.

    Only before training: the masks are buffers, in every checkpoint, so a resumed run, a
    validation and a test of a checkpoint have them without the scores file.

    Args:
        scores: the file ``tools/analysis/prompt_importance.py`` wrote.
        tokens: visual prompts to mask (T), in [0, P - 1].
        pieces: pieces (segments) to mask in every prompt (S), in [0, R].
    """
    priority = 'NORMAL'

    def __init__(self, scores, tokens, pieces):
        for name, value in (('tokens', tokens), ('pieces', pieces)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'PromptMaskHook {name}={value!r}: a non-negative int')
        self.scores = scores
        self.tokens = tokens
        self.pieces = pieces

    def before_train(self, runner):
        method = e2vpt_of(runner.model, 'PromptMaskHook')
        if method.learn_masks:
            raise ValueError('PromptMaskHook fixes the masks of a run after scoring; the model '
                             'learns its gates (learn_masks=True): set '
                             'model.backbone.prompt.learn_masks=False')
        token_scores, piece_scores, payload = read_importance(self.scores)
        P, R = method.num_tokens, method.num_segments
        if token_scores.shape[0] != P or piece_scores.shape[1] != R:
            raise ValueError(
                f'PromptMaskHook: {self.scores} scores {token_scores.shape[0]} prompts of '
                f'{piece_scores.shape[1]} pieces, the model has num_tokens={P}, num_segments={R}')
        layout = payload.get('segment_layout')
        if layout is not None and layout != method.segment_layout:
            raise ValueError(f'PromptMaskHook: {self.scores} scores pieces of segment_layout='
                             f'{layout!r}, the model has {method.segment_layout!r}')
        if self.tokens >= P:
            raise ValueError(f'PromptMaskHook tokens={self.tokens}: at least one of the model\'s '
                             f'{P} prompts must stay (tokens in [0, {P - 1}])')
        if self.pieces > R:
            raise ValueError(f'PromptMaskHook pieces={self.pieces}: a prompt has {R} pieces '
                             f'(pieces in [0, {R}])')
        token_mask = token_mask_for(token_scores, self.tokens)
        piece_mask = piece_mask_for(piece_scores, self.pieces)
        with torch.no_grad():
            method.token_mask[method.prunable_layers] = token_mask.to(method.token_mask)
            method.segment_mask[method.prunable_layers] = piece_mask.to(method.segment_mask)
        method.masks_changed()  # a compiled forward reads the new masks from here
        masked_tokens = (token_mask == 0).nonzero().flatten().tolist()
        masked_pieces = [(row == 0).nonzero().flatten().tolist() for row in piece_mask]
        if is_main_process():
            result = dict(scores=osp.abspath(self.scores), tokens=self.tokens, pieces=self.pieces,
                          masked_tokens=masked_tokens, masked_pieces=masked_pieces)
            atomic_write(osp.join(runner.work_dir, 'prompt_mask.json'),
                         json.dumps(result, indent=1))
        print_log(f'PromptMaskHook: masked prompts {masked_tokens} and {self.pieces} of '
                  f'{R} pieces in every prompt, from {self.scores}', logger='current')
