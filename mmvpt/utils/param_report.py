"""Trainable-parameter report, counted as in E²VPT: tuned / total x 100."""
from mmengine.model import is_model_wrapper

#: top-level submodules of mmpretrain / mmseg models that are task heads
HEAD_MODULES = ('head', 'neck', 'decode_head', 'auxiliary_head')


def parameter_report(model, head_modules=HEAD_MODULES):
    """Returns ``dict(total, tuned, tuned_percent, tuned_without_head)``.

    ``total`` counts every parameter, ``tuned`` those with ``requires_grad``, and
    ``tuned_without_head`` leaves out the task head (top-level ``head_modules``). Prompt
    elements that pruning took away (modules with ``num_pruned_parameters()``, E²VPT) are
    counted in neither.
    """
    if is_model_wrapper(model):
        model = model.module
    total = tuned = head = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            tuned += param.numel()
            if name.split('.', 1)[0] in head_modules:
                head += param.numel()
    pruned = sum(m.num_pruned_parameters() for m in model.modules()
                 if hasattr(m, 'num_pruned_parameters'))
    total, tuned = total - pruned, tuned - pruned
    return dict(total=total, tuned=tuned, tuned_percent=100. * tuned / max(total, 1),
                tuned_without_head=tuned - head)


def format_parameter_report(report):
    return (f'tuned parameters: {report["tuned"]:,} of {report["total"]:,} '
            f'({report["tuned_percent"]:.4f}%); without the head: '
            f'{report["tuned_without_head"]:,}')
