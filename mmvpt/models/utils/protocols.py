"""What a method declares of the protocol its authors ran: plain data, which
:mod:`mmvpt.protocols` (``tools/protocol.py``) plans and runs.

A method class sets ``protocol`` to a dict (a config may override it with a top-level
``protocol`` of the same form; methodless configs, linear probing and full fine-tuning,
declare theirs in their base config)::

    dict(name='VPT',                # how the plan names it
         source='...',              # where the authors ran it (None: no source, ours)
         note='...',                # said in the plan, e.g. why a grid is ours
         optimizer='SGD',           # the units of a searched lr: checked against the config
         options={key: value},      # config settings for every run (e.g. the epochs)
         drop_hooks=('type', ...),  # custom hooks every run goes without
         stages=[...])              # or vtab=[...], fgvc=[...]: the stages per benchmark

Stages, in order:

- ``dict(type='search', space={axis: values}, scale_lr=True, score='last', prefer=(axis,
  ...), options={})``: every combination of the axes (``lr``, ``wd``, ``num_tokens`` or a
  dotted config key; the first axis outermost) trained on the benchmark's train split and
  validated on its val split; the highest ``score`` wins: the ``'last'`` validation or the
  ``'best'`` one; ties go to the smaller value of each ``prefer`` axis in turn, then to the
  first in run order. ``scale_lr``: the lrs are base values x total batch / 256.
- ``dict(type='prune', token_fractions=(...), piece_fractions=(...), min_tokens=1,
  min_pieces=4)``: E²VPT's pruning with rewinding (before pruning, importance, rewind).
- ``dict(type='final', seeds=(...), train_split=None)``: trains with what the stages before
  chose (else the config's values) on the final train split (None: the benchmark's:
  train800val200, FGVC train) once per seed and tests each.
"""

# VPT's search (KMnP/vpt: tune_vtab.py and tune_fgvc.py, get_lrwd_range / prompt_main): base
# learning rates, scaled by batch / 256; weight decays; the seeds of the final runs. The FGVC
# grid has no 0.05.
VPT_LRS = (50., 25., 10., 5., 2.5, 1., 0.5, 0.25, 0.1, 0.05)
VPT_FGVC_LRS = VPT_LRS[:-1]
VPT_WDS = (0.01, 1e-3, 1e-4, 0.)
VPT_SEEDS = (42, 44, 82, 100, 800)
VPT_SOURCE = 'VPT (Jia et al. 2022) §4.1; KMnP/vpt tune_vtab.py, tune_fgvc.py, train.py'

# Our AdamW grid, for methods whose sources give no recipe: absolute rates (AdamW's are not
# scaled by batch in these recipes), around NOAH's and SSF's per-task values.
ADAMW_LRS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4)
ADAMW_WDS = (0.05, 1e-2, 1e-4, 0.)


def vpt_search(lrs, score='last', options=None, **axes):
    """A stage searching VPT's lr x wd grid (after ``axes``, e.g. the prompt length) on
    train -> val, the lr scaled by batch / 256, the last epoch's val score kept and ties
    going to the smaller lr "for stability" (tune_vtab.py's find_best_lrwd), then to the
    smaller value of each of ``axes``."""
    return dict(type='search', space=dict(**axes, lr=lrs, wd=VPT_WDS), scale_lr=True,
                score=score, prefer=('lr', *axes), options=options)


def vpt_protocol(name, source=VPT_SOURCE, before_final=(), note=None, search_options=None,
                 **axes):
    """VPT's protocol, for a method run the way VPT ran its own: the grid of
    :func:`vpt_search` with ``axes``, ``before_final`` stages, 5 seeds. FGVC: tune_fgvc.py's
    grid, scored by the best epoch's val accuracy as E²VPT's tune_fgvc_PruningRewind.py does
    (VPT's own FGVC script selects nothing). ``search_options``: config settings of the
    search's runs."""
    final = dict(type='final', seeds=VPT_SEEDS)
    return dict(name=name, source=source, note=note, optimizer='SGD',
                vtab=[vpt_search(VPT_LRS, options=search_options, **axes), *before_final, final],
                fgvc=[vpt_search(VPT_FGVC_LRS, score='best', options=search_options, **axes),
                      *before_final, final])


def fixed_recipe(name, source, seeds=VPT_SEEDS, train_split=None):
    """A recipe its source fixes (lr, wd, batch, ...): the config's values, trained once per
    seed (VPT's 5) on ``train_split`` (None: the benchmark's final split) and tested."""
    return dict(name=name, source=source,
                stages=[dict(type='final', seeds=seeds, train_split=train_split)])


def adamw_grid(name, note):
    """Our AdamW lr x wd grid on train -> val, then 5 seeds: for a method whose sources give
    no recipe (``note`` says so in the plan)."""
    return dict(name=name, source=None, note=note, optimizer='AdamW', stages=[
        dict(type='search', space=dict(lr=ADAMW_LRS, wd=ADAMW_WDS), scale_lr=False,
             score='last', prefer=('lr', )),
        dict(type='final', seeds=VPT_SEEDS)])
