"""Several tasks served on one backbone, eval mode, no grad: one model per task against one
MultiTaskModel for all (:func:`measure_serving`)."""
import copy
import functools
import tempfile
import time

import torch

from mmvpt.utils.tuned_checkpoint import load_tuned_checkpoint

from .rows import Classifier, backbone_class, prompt_config

MULTITASK_CLASSES = 100
SINGLE = 'one model, single-task batch'
MULTI = 'MultiTaskModel, mixed batch'
SEPARATE = 'separate models, one per task'


def held_bytes(*modules):
    """Bytes of the parameters and buffers the modules hold (each tensor once)."""
    tensors = {}
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[id(t)] = t.numel() * t.element_size()
    return sum(tensors.values())


def single_task_model(backbone, task):
    """One task's own model: a copy of the backbone with the task's prompts, and its head."""
    state, _ = load_tuned_checkpoint(task['checkpoint'])
    model = Classifier(copy.deepcopy(backbone), MULTITASK_CLASSES)
    prefix = 'backbone.prompt.'
    model.backbone.prompt.load_state_dict(
        {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    model.head.load_state_dict({'weight': state['head.fc.weight'], 'bias': state['head.fc.bias']})
    return model.eval()


def _each_task_apart(groups):
    """``run(img)`` of separate models: each (model, sample indices) of ``groups`` runs its
    samples of the batch."""
    def run(img):
        for model, samples in groups:
            model(img[samples])
    return run


def time_serving(models, run, batch, img_size, device, steps, cpu_time=False):
    """(images/s, peak CUDA bytes or None) of ``run(img)`` over a batch, eval mode, no grad:
    one warm-up, then ``steps`` timed calls, of which the fastest counts (on shared CPUs
    other processes only ever slow a call down). On GPU the models move there first, so the
    peak counts their weights too. ``cpu_time``: seconds of CPU time of this thread (with one
    torch thread, the work itself) instead of wall-clock seconds."""
    clock = time.thread_time if cpu_time else time.perf_counter
    peak = None
    if device == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for model in models:
        model.to(device).eval()
    img = torch.randn(batch, 3, img_size, img_size, device=device)
    with torch.no_grad():
        run(img)
        seconds = float('inf')
        for _ in range(steps):
            if device == 'cuda':
                torch.cuda.synchronize()
            start = clock()
            run(img)
            if device == 'cuda':
                torch.cuda.synchronize()
            seconds = min(seconds, clock() - start)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated()
    for model in models:
        model.cpu()
    return batch / seconds, peak


def measure_serving(arch, img_size, batch, method, p, options, on_row=None):
    """Serving tasks of ``method`` (a key of VARIANTS at P=``p``, or of ADAPTER_ROWS with
    ``p`` 0) on one backbone, eval mode,
    no grad, for every N of ``options.multitask``: the rows of one table, each a dict: setup
    (SINGLE, MULTI or SEPARATE), tasks (N), backbones (held), weights (bytes of parameters
    and buffers), weights_x_one, peak (CUDA bytes, None on CPU), peak_x_one, rate (images
    per second, or per CPU second with ``options.cpu_time``) and rate_x_single, the ratios
    to the first row: one model on a batch of one task. ``on_row`` as in
    :func:`measure_rows`.

    The tasks are random tuned tensors (prompts and a 100-class LinearClsHead each, see
    :func:`mmvpt.testing.write_random_tasks`) written as tuned-only checkpoints to a
    temporary folder and loaded by MultiTaskModel; the backbone's weights are random too (the
    cost does not depend on them)."""
    from mmvpt.apis import MultiTaskModel
    from mmvpt.testing import write_random_tasks
    torch.manual_seed(0)
    base = backbone_class(arch)(arch=arch, img_size=img_size, prompt=prompt_config(arch, method, p),
                                frozen=True, arch_cfg=options.arch_cfg)
    base.init_weights()  # no init_cfg: the random weights stand in for the pretrained ones
    base.eval()
    rows = []

    def measured(setup, n, models, run):
        rate, peak = time_serving(models, run, batch, img_size, options.device, options.steps,
                                  options.cpu_time)
        row = dict(setup=setup, tasks=n, backbones=1 if setup != SEPARATE else n,
                   weights=held_bytes(*models), rate=rate, peak=peak)
        reference = rows[0] if rows else row
        row.update(weights_x_one=row['weights'] / reference['weights'],
                   rate_x_single=row['rate'] / reference['rate'],
                   peak_x_one=None if peak is None else peak / reference['peak'])
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory() as folder:
        specs = write_random_tasks(base, max(options.multitask), folder, MULTITASK_CLASSES)
        names = list(specs)
        one = single_task_model(base, specs[names[0]])
        measured(SINGLE, 1, [one], one)
        del one
        for n in options.multitask:
            tasks = torch.randint(n, (batch, ), generator=torch.Generator().manual_seed(n))
            multi = MultiTaskModel(copy.deepcopy(base), {k: specs[k] for k in names[:n]})
            index = tasks.to(options.device)
            measured(MULTI, n, [multi], functools.partial(multi, tasks=index))
            del multi
            models = [single_task_model(base, specs[k]) for k in names[:n]]
            groups = [(models[t], (tasks == t).nonzero().flatten().to(options.device))
                      for t in range(n)]
            groups = [(model, samples) for model, samples in groups if samples.numel()]
            measured(SEPARATE, n, models, _each_task_apart(groups))
            del models, groups
    return rows
