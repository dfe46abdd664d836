"""Test-only: E²VPT pruning scores computed without PromptPruningHook's code.

The token mask rho_k multiplies prompt k, and segment mask sigma_kr multiplies that prompt's
dims of segment r, so at rho = sigma = 1 the chain rule gives

    dL/drho_k = sum_d p_kd dL/dp_kd,      dL/dsigma_kr = sum_{d in segment r} p_kd dL/dp_kd,

with dL/dp, the gradient of the prompt parameters, from torch.autograd of a cross-entropy
loss written here. A pruned (removed) token gets no gradient, so its segments score 0, as
they do in the hook.
"""
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate


def batches_of(dataset, indices, batch_size):
    """The collated batches a non-shuffling loader with ``batch_size`` makes of ``indices``."""
    indices = list(indices)
    return [pseudo_collate([dataset[i] for i in indices[start:start + batch_size]])
            for start in range(0, len(indices), batch_size)]


def mask_gradients(classifier, batch):
    """(dL/d token mask (L, P), dL/d segment mask (L, P, R)) of one batch, in eval mode,
    the token mask read at its current value and the segment mask at 1."""
    method = classifier.backbone.prompt
    was_training = classifier.training
    classifier.eval()
    try:
        data = classifier.data_preprocessor(batch, True)
        logits = classifier(data['inputs'], mode='tensor')
        labels = torch.cat([sample.gt_label for sample in data['data_samples']])
        loss = F.cross_entropy(logits, labels)
        prompts = method.prompts
        grad, = torch.autograd.grad(loss, prompts)
    finally:
        classifier.train(was_training)
    contribution = (grad * prompts).detach()  # (L, P, D)
    L, P, D = contribution.shape
    R = method.num_segments
    if method.segment_layout == 'contiguous':
        segments = contribution.view(L, P, R, D // R).sum(-1)
    else:  # interleaved: segment r holds dims r, r + R, ...
        segments = contribution.view(L, P, D // R, R).sum(-2)
    return contribution.sum(-1), segments


def reference_scores(classifier, batches, signed=False):
    """Mean over ``batches`` of |dL/drho| (or dL/drho when ``signed``), for the token and
    the segment masks: (token scores (L, P), segment scores (L, P, R))."""
    tokens = segments = 0
    for batch in batches:
        token_grad, segment_grad = mask_gradients(classifier, batch)
        if not signed:
            token_grad, segment_grad = token_grad.abs(), segment_grad.abs()
        tokens, segments = tokens + token_grad, segments + segment_grad
    return tokens / len(batches), segments / len(batches)
