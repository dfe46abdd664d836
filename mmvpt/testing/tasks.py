"""Random tasks saved as real tuned-only checkpoints: what serving several tasks on one
backbone costs does not depend on what the tasks learnt."""
import os.path as osp

import torch
import torch.nn as nn

from mmvpt.utils.tuned_checkpoint import save_tuned_checkpoint


def write_random_tasks(backbone, count, folder, num_classes=100, seed=0):
    """``count`` tuned-only checkpoints ``folder/task<i>.pth`` of random tasks for the prompt
    method of ``backbone`` (a PromptedViT or PromptedSwin): each the method's parameters moved
    off their init (masks and other buffers as they are) and a random linear head, keyed as a
    classifier's (``backbone.prompt.*``, ``head.fc.*``). Returns them as MultiTaskModel's task
    specs: ``{'task<i>': dict(checkpoint=path, config=Config with the task's
    mmpretrain LinearClsHead)}``."""
    from mmengine.config import Config
    embed_dims = backbone.embed_dims
    head = dict(type='mmpretrain.LinearClsHead', num_classes=num_classes, in_channels=embed_dims,
                topk=(1, ))
    # What a classifier's tuned-only checkpoint holds, without the frozen backbone's weights.
    task = nn.Module()
    task.backbone = nn.Module()
    task.backbone.prompt = backbone.prompt
    task.head = nn.Module()
    task.head.fc = nn.Linear(embed_dims, num_classes)
    params = {f'backbone.prompt.{name}' for name, _ in backbone.prompt.named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    tasks = {}
    for index in range(count):
        state = {k: (v + 0.02 * torch.randn(v.shape, generator=generator) if k in params
                     else v.clone())
                 for k, v in task.state_dict().items() if k.startswith('backbone.prompt.')}
        state['head.fc.weight'] = 0.02 * torch.randn(num_classes, embed_dims, generator=generator)
        state['head.fc.bias'] = torch.zeros(num_classes)
        path = save_tuned_checkpoint(osp.join(folder, f'task{index}.pth'), task, state_dict=state)
        tasks[f'task{index}'] = dict(checkpoint=path, config=Config(dict(model=dict(head=head))))
    return tasks
