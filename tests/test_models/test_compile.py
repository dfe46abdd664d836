"""``torch.compile`` on every method, tiny ViT and Swin: no graph break inside the backbone's
forward (train and eval, with and without ``with_cp``), compiled outputs and tuned gradients
equal to eager, recompiles bounded by the pruning step, and MMEngine's ``compile=True``
leaves checkpoints, resume and the stock loaders as they are."""
import glob
import os.path as osp

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from mmvpt.models.prompts.base import method_options
from mmvpt.registry import MODELS
from mmvpt.utils import load_local_checkpoint

from tests.conftest import DEMO_CONFIG, data_options, run_tool
from tests.helpers import tiny_models
from tests.helpers.prompt_dropout import spy_folded_cross_attention
from tests.helpers.tiny_models import BACKBONES, prompt_config
from tests.helpers.tiny_models import METHODS as TINY_METHODS

# slow: seconds of tracing per model and mode, minutes in all (and train.py --compile)
pytestmark = pytest.mark.tools

# every method and path of the mixed-precision tests, E2VPT pruned in both modes (and, pruned by
# removal, with the learnable gates of the runs before the official pruning), full fine-tuning
METHODS = {**TINY_METHODS, 'e2vpt_removed': TINY_METHODS['e2vpt'], 'full': None,
           'e2vpt_gates': {**TINY_METHODS['e2vpt'], 'learn_masks': True}}


def prune(method):
    """A token and a segment pruned in the first block, as the pruning hook leaves them."""
    with torch.no_grad():
        method.token_mask[0, 1] = 0
        method.segment_mask[0, 0, 2] = 0
    method.masks_changed()


def build(backbone, method, with_cp=False, dropout=None):
    prompt = prompt_config(backbone, method, METHODS)
    if (prompt is not None and dropout is not None
            and 'dropout' in method_options(MODELS.get(prompt['type']))):
        prompt = {**prompt, 'dropout': dropout}
    torch.manual_seed(0)
    model = tiny_models.build(prompt, backbone, frozen=method != 'full', with_cp=with_cp)
    model.derive_from_frozen()
    if method.startswith('e2vpt_'):
        prune(model.prompt)
    return model


def graph_breaks(model, images, amp=False):
    torch._dynamo.reset()
    with torch.autocast('cpu', torch.bfloat16, enabled=amp):
        explanation = torch._dynamo.explain(model)(images)
    return explanation.graph_break_count, [str(b.reason) for b in explanation.break_reasons]


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
@pytest.mark.parametrize('method', sorted(METHODS))
def test_no_graph_break(backbone, method):
    images = torch.randn(2, 3, 32, 32)
    for with_cp, mode, amp in ((False, 'train', False), (False, 'eval', False),
                               (True, 'train', False), (False, 'train', True)):
        model = build(backbone, method, with_cp=with_cp).train(mode == 'train')
        count, reasons = graph_breaks(model, images, amp)
        assert count == 0, f'{mode}, with_cp={with_cp}, bf16 autocast={amp}: {reasons}'


def tuned_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def step(model, images, run=None):
    """Outputs and the gradients of every tuned tensor of one forward + backward of ``run``
    (``model`` or its compiled form)."""
    model.zero_grad(set_to_none=True)
    outs = (model if run is None else run)(images)
    if outs[0].requires_grad:  # not so for linear probing: nothing in the backbone trains
        sum((o.float() ** 2).mean() for o in outs).backward()
    return [o.detach() for o in outs], tuned_grads(model)


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
@pytest.mark.parametrize('method', sorted(METHODS))
def test_compiled_equals_eager(monkeypatch, backbone, method):
    """aot_eager (the traced graph and its backward, run by eager kernels): outputs and the
    gradients of every tuned tensor, train mode (no dropout, so both draw nothing), eval, and
    train with ``with_cp`` (the compiled checkpointed blocks against the eager plain ones)."""
    images = torch.randn(2, 3, 32, 32)
    model = build(backbone, method, dropout=0.)
    checkpointed = build(backbone, method, with_cp=True, dropout=0.).train()  # the same weights
    folded = spy_folded_cross_attention(monkeypatch)
    torch._dynamo.reset()
    for mode, with_cp in (('train', False), ('eval', False), ('train', True)):
        if with_cp:
            # the spy's list append is a side effect checkpointing cannot trace (the library
            # has none): the eager forward took the path the method is named after
            assert bool(folded) == (method == 'cvpt_folded')
            monkeypatch.undo()
        model.train(mode == 'train')
        eager_out, eager_grads = step(model, images)
        run = checkpointed if with_cp else model
        compiled_out, compiled_grads = step(
            run, images, torch.compile(run, backend='aot_eager', fullgraph=True))
        assert eager_grads.keys() == compiled_grads.keys() and (eager_grads or method == 'linear')
        for got, want in zip(compiled_out, eager_out):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for name, want in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], want, atol=1e-5, rtol=1e-5, msg=name)


def test_prompt_dropout_is_drawn_in_the_compiled_graph():
    """Compiled train-mode forwards draw new prompt dropout masks each call (not one mask
    baked into the graph), eval draws none."""
    images = torch.randn(2, 3, 32, 32)
    model = build('vit', 'vpt_deep', dropout=0.5).train()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        first, second = compiled(images)[0], compiled(images)[0]
        assert not torch.allclose(first, second)
        model.eval()
        torch.testing.assert_close(compiled(images)[0], model(images)[0])


def test_pruning_recompiles_once():
    """E²VPT 'remove': pruning changes the kept tokens, and the compiled forward follows
    with exactly one recompile; later steps reuse it. Outputs equal eager after pruning."""
    images = torch.randn(2, 3, 32, 32)
    model = build('vit', 'e2vpt', dropout=0.).train()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for _ in range(2):
        compiled(images)
    assert counter.frame_count == 1
    prune(model.prompt)  # as PromptPruningHook leaves the method
    for _ in range(3):
        out = compiled(images)[0]
    assert counter.frame_count == 2
    torch.testing.assert_close(out, model(images)[0])
    # the compiled forward ran with the pruned prompt removed: one key fewer in block 0
    assert model.prompt._mask_state[0][0].tolist() == [0, 2, 3]


def test_inductor_end_to_end():
    """Inductor (the default backend) on CPU: a CVPT and an E²VPT train step, compiled
    forward and backward, equal to eager."""
    images = torch.randn(2, 3, 32, 32)
    for method in ('cvpt_plain', 'e2vpt_removed'):
        model = build('vit', method, dropout=0.).train()
        torch._dynamo.reset()
        compiled = torch.compile(model)
        eager_out, eager_grads = step(model, images)
        compiled_out, compiled_grads = step(model, images, compiled)
        torch.testing.assert_close(compiled_out[0], eager_out[0], atol=1e-5, rtol=1e-5)
        assert compiled_grads.keys() == eager_grads.keys()
        for name, want in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], want, atol=1e-5, rtol=1e-5, msg=name)


PRUNING_HOOKS = ("dict(type='mmvpt.PromptPruningHook', prune_after=2, token_fraction=0.5, "
                 "segment_fraction=0.5), dict(type='mmvpt.TunedCheckpointHook')")


def train_e2vpt(tmp_path, data_root, work, compile_backend=None, resume=None):
    """The E²VPT pruning run of test_pruning.py (2 epochs, prune, rewind, 2 epochs) through
    MMEngine's runner, with ``compile=dict(backend=...)`` as ``tools/train.py --compile``
    sets it; returns the runner and its final tuned tensors."""
    from mmvpt.engine.hooks import tuned_state_keys

    from tests.helpers.runners import E2VPT, make_runner, write_config
    extra = '' if compile_backend is None else f'compile = dict(backend={compile_backend!r})\n'
    config = write_config(tmp_path, E2VPT, PRUNING_HOOKS, extra)
    options = {} if resume is None else dict(resume=True, load_from=resume)
    runner = make_runner(config, tmp_path / work, data_root, **options)
    runner.train()
    state = runner.model.state_dict()
    return runner, {k: state[k].clone() for k in tuned_state_keys(runner.model)}


def test_mmengine_compile_trains_prunes_and_resumes_like_eager(tiny_vtab, tmp_path):
    """``compile=True`` in MMEngine compiles the runner's train step: the run equals the
    eager run, pruning recompiles the model's forward once (and the optimizer step once,
    whose state the rewind clears), checkpoints hold the same keys (no ``_orig_mod.``),
    and a compiled run resumed after pruning ends where the uninterrupted one did."""
    torch._dynamo.reset()
    _, eager = train_e2vpt(tmp_path, tiny_vtab, 'eager')
    torch._dynamo.reset()
    torch._dynamo.utils.guard_failures.clear()
    runner, compiled = train_e2vpt(tmp_path, tiny_vtab, 'compiled', 'aot_eager')
    recompiles = {code.co_name: reasons
                  for code, reasons in torch._dynamo.utils.guard_failures.items()}
    assert sorted(recompiles) == ['_run_forward', 'step']  # the model's forward, AdamW's step
    assert len(recompiles['_run_forward']) == 1 and '_mask_state' in str(recompiles['_run_forward'])
    assert runner.model.backbone.prompt.token_mask.sum(1).tolist() == [2.] * 4  # pruned

    assert compiled.keys() == eager.keys()
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, atol=1e-5, rtol=1e-5, msg=name)
    work = tmp_path / 'compiled'
    saved = load_local_checkpoint(str(work / 'epoch_4.pth'))['state_dict']
    assert set(saved) == set(compiled) and not any('_orig_mod' in k for k in saved)

    torch._dynamo.reset()
    _, resumed = train_e2vpt(tmp_path, tiny_vtab, 'resumed', 'aot_eager',
                             resume=str(work / 'epoch_3.pth'))
    # it went on from epoch 3: a run from the start would end equal too (seeded)
    assert ([osp.basename(p) for p in glob.glob(str(tmp_path / 'resumed' / 'epoch_*.pth'))]
            == ['epoch_4.pth'])
    for name, value in compiled.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-6, msg=name)


def test_train_tool_compile_flag(tiny_vtab, tmp_path):
    """``tools/train.py --compile BACKEND`` hands MMEngine its compile option (here on the
    demo's full fine-tuning); the checkpoint it writes loads through tools/test.py."""
    work = str(tmp_path / 'work')
    proc = run_tool('train.py', DEMO_CONFIG, '--work-dir', work, '--compile', 'aot_eager',
                    '--cfg-options', *data_options(tiny_vtab), 'train_cfg.max_epochs=1')
    assert 'Model has been "compiled"' in proc.stdout + proc.stderr
    checkpoint, = glob.glob(osp.join(work, 'epoch_1.pth'))
    assert not any('_orig_mod' in k for k in load_local_checkpoint(checkpoint)['state_dict'])
    proc = run_tool('test.py', DEMO_CONFIG, checkpoint, '--cfg-options', *data_options(tiny_vtab))
    assert 'accuracy/top1' in proc.stdout + proc.stderr
