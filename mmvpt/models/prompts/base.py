"""The extension points a prompted backbone offers a prompt-tuning method.

A backbone runs its pretrained blocks and, at these places per block, asks its method:

===================  ========================================  ==============================
point                asked                                     used by
===================  ========================================  ==============================
``tokens``           prompt tokens for block l that replace    VPT-deep, E²VPT (visual), iVPT
                     the previous block's: their outputs are
                     never used, so they enter the block as
                     keys and values only
``sequence_tokens``  prompt tokens that join the sequence      VPT-shallow
                     before block l and stay in it
``kv``               extra keys/values for block l's           E²VPT (key-value prompts)
                     attention, before and after the
                     sequence's keys, in head space
``residual_term``    a term added to the residual stream at    CVPT
                     one of five named places of the block
                     (:data:`RESIDUAL_POINTS`)
``after_block``      update of the tokens after block l, given iVPT (attentive
                     the CLS attention row over image tokens   reinforcement)
``adapt``            the output of a frozen operation (norm1,  LoRA, SSF, BitFit
                     qkv, proj, norm2, fc1, fc2 of block l;
                     the patch embedding (and its projection
                     where it has a norm), the patch mergings'
                     norms, the final norm), given its module
                     and input; asked only of a method with
                     ``adapts_ops``
``branch``           the attention or MLP branch's output      Adapter, AdaptFormer
                     (after layer scale and drop-path, before
                     it joins the residual stream), given the
                     stream it branched from
===================  ========================================  ==============================

Two points act where the attention branch joins the residual stream: ``branch('attn')``
changes the branch's output (an adapter on it), ``residual_term('beside_attn')`` adds a term of
the method's own next to it (CVPT's position 2): ``x + branch(SA(x)) + term(x)``.

``start`` runs once per forward and returns what is the same for every block call of that
forward (a :class:`ForwardContext`: mixed prompts, for instance, and every per-layer tensor
sliced into its layers), so it is computed once, not per block or sample.

The task axis: a method serves one task or, stacked (:meth:`PromptMethod.stacked`, for
``mmvpt.apis.MultiTaskModel``), T tasks with a per-sample task index. Methods read their
tensors through the context, which gives every per-layer tensor a leading task axis (T, or
1 for one task), and the backbone gathers what the method returns per sample
(:meth:`ForwardContext.per_sample`) after the per-task work: prompt keys and values are
projected once per task, not per sample, and one task needs no code of its own.
"""
import copy
import difflib
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DROPOUT_MODES = ('sample', 'batch')
#: where a method's :meth:`PromptMethod.residual_term` may join block l, in the order they act
#: (SA and MLP: the whole branches, with norm, layer scale and drop-path; a term gets neither):
#:
#: - ``'before_attn'``: x += term(x); x += SA(x); x += MLP(x)
#: - ``'beside_attn'``: x += SA(x) + term(x); x += MLP(x)
#: - ``'after_attn'``: x += SA(x); x += term(x); x += MLP(x)
#: - ``'mlp_input'``: x += SA(x); x += MLP(LN2 x + term(x)), the term entering the MLP
#: - ``'after_mlp'``: x += SA(x); x += MLP(x); x += term(x)
#:
#: CVPT's paper numbers them 1..5 (:data:`mmvpt.models.prompts.cvpt.INSERT_POSITIONS`).
RESIDUAL_POINTS = ('before_attn', 'beside_attn', 'after_attn', 'mlp_input', 'after_mlp')


class ForwardContext:
    """What one forward shares across its block calls (:meth:`PromptMethod.start`).

    A declared class, not an ad-hoc namespace, so that ``torch.compile`` traces it without
    a graph break; a method that needs more per-forward values subclasses it, declares
    them with their defaults, and names the subclass in ``context_class``.
    """

    def __init__(self, batch_size, tasks=None, layers=None):
        #: samples in the batch (B)
        self.batch_size = batch_size
        #: (B,) task index per sample with stacked tasks, else None
        self.tasks = tasks
        #: ``{name: [layer 0's tensor, layer 1's, ...]}``: the method's per-layer tensors
        #: (:attr:`PromptMethod.per_layer`), sliced once for the whole forward, each with a
        #: leading task axis
        self.layers = {} if layers is None else layers

    def at(self, name, layer):
        """Layer ``layer``'s slice of the method's per-layer tensor ``name``, (T, ...): T
        stacked tasks, or 1 for one task."""
        return self.layers[name][layer]

    def per_sample(self, tensors):
        """Per-task tensors (T, ...) gathered to (B, ...) by the per-sample task index. With
        one task they stay as they are: their leading 1 (or B, after per-sample dropout)
        broadcasts over the batch. Takes a tensor, None, or a tuple (named tuples too) of
        them; other tuple items pass unchanged."""
        if self.tasks is None or tensors is None:
            return tensors
        if isinstance(tensors, tuple):
            items = [t[self.tasks] if torch.is_tensor(t) else t for t in tensors]
            return type(tensors)(*items) if hasattr(tensors, '_fields') else tuple(items)
        return tensors[self.tasks]


class PromptMethod(nn.Module):
    """No-op defaults of every extension point; a method overrides what it uses.

    A backbone may change width between stages (Swin). Per-layer tensors are then kept as
    one parameter per stage: :meth:`stage_parameter` makes them and :meth:`at` reads layer
    l's slice, so a method is written once for ViT (one stage, one ``(L, ...)`` tensor, as
    ever) and Swin.

    Args:
        num_layers: blocks of the backbone (L).
        embed_dim: token width (D): an int, or one per block.
        num_heads: attention heads (H): an int, or one per block.
        patch_size: backbone patch size, for VPT's init bound.
        qkv_bias: whether the backbone's qkv projection has a bias.
        has_cls_token: whether the backbone has a CLS token (iVPT's attentive
            reinforcement needs one).
        mlp_dim: hidden width of the blocks' MLPs: an int, or one per block (default 4 D).
        patch_norm: whether the patch embedding normalises its projection (Swin): the
            backbone then runs ``'patch_proj'`` and ``'patch_embed'`` through :meth:`adapt`.
        patch_mergings: ``((layer, width), ...)``: per patch merging (Swin), the first block
            of the stage it starts and its norm's width (4 C).
        position_bias_entries: rows of each block's relative-position bias table (Swin),
            one per block, or None where the attention has none.
    """
    #: the name tables and reports print (:func:`display_name`)
    display_name = None
    #: the per-forward context :meth:`start` returns
    context_class = ForwardContext
    #: dropout on the prompts (:meth:`drop`): the rate and ``'sample'`` or ``'batch'``
    #: (:data:`DROPOUT_MODES`); a method with prompts sets them by :meth:`set_prompt_dropout`
    dropout = 0.
    dropout_mode = 'sample'
    #: names of the method's per-layer tensors that :meth:`start` slices into layers for
    #: the forward (``ctx.at(name, layer)``)
    per_layer = ()
    #: the backbone runs the frozen operations through :meth:`adapt` (and so takes
    #: timm's fused paths apart: only methods that change those operations set it)
    adapts_ops = False
    #: names, relative to the method, of the tensors or submodules it derives from the frozen
    #: weights (CVPT's own cross-attention copies, DoRA's magnitudes):
    #: :meth:`derive_from_frozen` computes them whenever other frozen weights arrive, unless a
    #: checkpoint brought them (``mmvpt.FrozenInitHook``). A method whose options decide what it
    #: derives narrows the declaration per instance.
    derived_from_frozen = ()

    # -- what the rest of the project knows of a method: declared here, next to it, and
    # -- nowhere else (lists of methods are derived from the registered classes)
    #: configs/<config_folder>/: the method's generated VTAB-1k / FGVC configs; protocol
    #: summaries and the report name its results by it (None: no generated configs)
    config_folder = None
    #: where the method's rows go in tables (report, benchmark, generated configs): lower first
    table_order = 1000
    #: the rows tools/analysis/benchmark.py measures: {row name: (what the row's label adds
    #: to the display name, options)}; a method with ``num_tokens`` is measured at each P
    benchmark_rows = {}
    #: the tiny models the tests build of the method: {name: options}
    tiny_settings = {}
    #: the method's generated Swin-B configs: the configs/_base_/models/swin-b.py backbone
    #: variable they use, comment lines and config lines they add
    swin_config = dict(backbone='swin_b', comments=(), lines=())
    #: tools/protocol.py: the protocol its authors ran (see mmvpt/models/utils/protocols.py)
    protocol = None

    @classmethod
    def backbone_options(cls, backbone):
        """Options the method needs on ``backbone`` (``'vit'`` or ``'swin'``) beyond the
        ones it is given (iVPT: no attentive reinforcement without a CLS token)."""
        return {}

    @classmethod
    def canonical_options(cls, options):
        """``options`` (a config's) with every value spelled as the method keeps it, so that
        two spellings of one setting compare equal (CVPT: ``insert=3`` is
        ``insert='after_attn'``)."""
        return options

    @classmethod
    def benchmark_row(cls, name, backbone):
        """(what the label adds, options) of benchmark row ``name`` on ``backbone``."""
        suffix, options = cls.benchmark_rows[name]
        return suffix, {**options, **cls.backbone_options(backbone)}

    @classmethod
    def config_recipe(cls, benchmark, task):
        """What the generated config of ``task`` (``benchmark``: ``'vtab'`` or ``'fgvc'``) sets:
        ``dict(prompt=..., backbone=..., loader=..., optimizer=..., preprocessor=..., note='...',
        pipelines=(train, test))``, each optional: prompt / backbone / loader / optimizer /
        data preprocessor options, the first comment line, and the names of the method base
        config's train and test pipelines (tools/misc/generate_configs.py)."""
        return {}

    def __init__(self, num_layers, embed_dim, num_heads, patch_size=16, qkv_bias=True,
                 has_cls_token=True, mlp_dim=None, patch_norm=False, patch_mergings=(),
                 position_bias_entries=None):
        super().__init__()
        self.num_layers = num_layers
        self.layer_dims = _per_layer('embed_dim', embed_dim, num_layers)
        self.layer_heads = _per_layer('num_heads', num_heads, num_layers)
        self.layer_mlp_dims = (tuple(4 * d for d in self.layer_dims) if mlp_dim is None
                               else _per_layer('mlp_dim', mlp_dim, num_layers))
        #: [(first layer, end layer)] of runs of blocks with the same width and heads
        self.stages = []
        for layer, shape in enumerate(zip(self.layer_dims, self.layer_heads)):
            if layer and shape == (self.layer_dims[layer - 1], self.layer_heads[layer - 1]):
                self.stages[-1] = (self.stages[-1][0], layer + 1)
            else:
                self.stages.append((layer, layer + 1))
        self.embed_dim = self.layer_dims[0]
        self.num_heads = self.layer_heads[0]
        self.patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        self.qkv_bias = qkv_bias
        self.has_cls_token = has_cls_token
        self.patch_norm = patch_norm
        self.patch_mergings = tuple(tuple(m) for m in patch_mergings)
        self.position_bias_entries = (
            None if position_bias_entries is None
            else _per_layer('position_bias_entries', position_bias_entries, num_layers))
        #: tasks stacked on the tuned tensors' leading axis (None: one task, no such axis)
        self.num_tasks = None

    # -- per-layer tensors of stage widths -----------------------------------------------------
    def stage_parameter(self, shape, init):
        """Per-layer tensors of shape ``shape(dim, heads)``: one ``(L, *shape)`` parameter
        for a single-width backbone, else an ``nn.ParameterList`` with one
        ``(L_stage, *shape)`` parameter per stage. ``init(tensor)`` fills each stage's, as
        every per-layer tensor's init (``op_parameter``'s too)."""
        tensors = []
        for start, end in self.stages:
            t = torch.empty(end - start, *shape(self.layer_dims[start], self.layer_heads[start]))
            init(t)
            tensors.append(nn.Parameter(t))
        return tensors[0] if len(tensors) == 1 else nn.ParameterList(tensors)

    def stage_of(self, layer):
        """(stage index, index of the layer within its stage)."""
        for index, (start, end) in enumerate(self.stages):
            if start <= layer < end:
                return index, layer - start
        raise IndexError(f'layer {layer} of {self.num_layers}')

    def layer_of(self, param, layer):
        """Layer ``layer``'s slice of a :meth:`stage_parameter` (or of a list of per-stage
        tensors, or of any per-layer tensor) as held; with stacked tasks, of every task:
        (T, ...). For merging and analysis: the forward reads ``ctx.at(name, layer)``,
        sliced once per forward (see :meth:`layers`)."""
        if isinstance(param, (nn.ParameterList, list)):
            stage, layer = self.stage_of(layer)
            param = param[stage]
        return param[layer] if self.num_tasks is None else param[:, layer]

    def with_task_axis(self, tensor):
        """``tensor`` with its leading task axis: (T, ...) as stacked, (1, ...) for one task."""
        return tensor if self.num_tasks is not None else tensor.unsqueeze(0)

    def layers(self, param):
        """Every layer's slice of a :meth:`stage_parameter` (or of a list of per-stage
        tensors, or of any per-layer tensor) as a list, each with a leading task axis, by
        one ``unbind`` per stage. Taken once per forward, this is one op and, in backward,
        one stack of the layers' gradients, where slicing in every block call would be L
        slices, L zero-padded gradients of the whole tensor and L - 1 additions of them."""
        stages = param if isinstance(param, (nn.ParameterList, list, tuple)) else [param]
        return [t for stage in stages for t in self.with_task_axis(stage).unbind(1)]

    @staticmethod
    def stage_tensors(param):
        """The per-stage tensors of a :meth:`stage_parameter` (one for ViT)."""
        return list(param) if isinstance(param, nn.ParameterList) else [param]

    def start(self, batch_size, tasks=None):
        """Per-forward values shared by every block call, passed back to them as ``ctx``.

        ``tasks``: (B,) task index per sample, for stacked tasks (:meth:`stacked`)."""
        if (tasks is None) != (self.num_tasks is None):
            raise ValueError(
                f'{type(self).__name__}: a per-sample task index needs tasks stacked by '
                'mmvpt.apis.MultiTaskModel, and stacked tasks need one' if tasks is not None
                else (f'{type(self).__name__} holds {self.num_tasks} tasks: '
                      'pass each sample\'s task'))
        if tasks is not None and self.training:
            raise RuntimeError(
                f'{type(self).__name__}: stacked tasks are for inference (eval mode)')
        layers = {name: self.layers(getattr(self, name)) for name in self.per_layer
                  if getattr(self, name) is not None}
        return self.context_class(batch_size, tasks, layers)

    def set_prompt_dropout(self, dropout, mode):
        """Checks and sets the prompt dropout :meth:`drop` applies."""
        if not 0 <= dropout < 1:
            raise ValueError(f'{type(self).__name__} dropout={dropout!r}: must be in [0, 1)')
        check_choices(type(self).__name__, dropout_mode=(mode, DROPOUT_MODES))
        self.dropout, self.dropout_mode = dropout, mode

    def drop(self, ctx, prompts):
        """The prompt dropout (:attr:`dropout`, :attr:`dropout_mode`) on one layer's
        (1, P, D) prompts -> (1 or B, P, D). Stacked tasks serve in eval mode, where their
        (T, P, D) prompts pass as they are."""
        return drop_prompts(prompts, ctx.batch_size, self.dropout, self.dropout_mode, self.training)

    def prompt_mask(self, ctx, layer):
        """With stacked tasks: a (T, P) bool mask of the prompts of :meth:`tokens` that take
        part in attention (tasks may have pruned different ones), or None for all of them."""
        return None

    # -- several tasks on one backbone -------------------------------------------------
    def check_stackable(self):
        """Raises if the method's tuned tensors cannot be served stacked (a subclass names
        what it cannot stack)."""

    def stacked(self, states):
        """A copy of the method that serves the given tasks in one batch, in eval mode, with
        a per-sample task index (``start(B, tasks)``): each of its tensors (``state_dict()``
        keys) is the stack of the tasks' tensors, (T, ...), held as a buffer.

        Args:
            states: ``{task name: {key: tensor}}``, keyed like ``self.state_dict()``; the
                task axis follows its order.
        """
        self.check_stackable()
        own = self.state_dict()
        for task, state in states.items():
            problems = [f'{k}: not in the checkpoint' for k in own if k not in state]
            problems += [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
                         for k, v in own.items() if k in state and state[k].shape != v.shape]
            problems += [f'{k}: not in the model' for k in state if k not in own]
            if problems:
                raise ValueError(f'task {task!r}: its {type(self).__name__} tensors do not fit the '
                                 'shared model: ' + '; '.join(problems[:8]))
        method = copy.deepcopy(self)
        for key, value in own.items():
            *path, name = key.split('.')
            module = method.get_submodule('.'.join(path))
            stacked = torch.stack([state[key].to(value) for state in states.values()])
            delattr(module, name)  # a parameter or buffer of one task's shape
            module.register_buffer(name, stacked)
        method.num_tasks = len(states)
        method.requires_grad_(False)
        return method.eval()

    def tokens(self, ctx, layer):
        """Block ``layer``'s own prompt tokens (T, P, D), or None: they replace the previous
        block's and enter as keys and values only (their outputs are never used)."""
        return None

    def sequence_tokens(self, ctx, layer):
        """Prompt tokens (T, P, D) that join the sequence before block ``layer`` and stay in
        it, or None."""
        return None

    def kv(self, ctx, layer):
        """(before, after): extra (keys, values) for block ``layer``'s attention, before and
        after the sequence's keys, each (T, H, L, d) or None."""
        return None, None

    def residual_term(self, ctx, layer, where, x, attn):
        """The term the method adds to block ``layer``'s residual stream ``x`` at ``where``
        (one of :data:`RESIDUAL_POINTS`), given the block's frozen attention ``attn``, or
        None: most methods add none anywhere."""
        return None

    def adapt(self, ctx, layer, name, module, x):
        """The output of the frozen ``module`` (named ``name``: ``'norm1'``, ``'qkv'``,
        ``'proj'``, ``'norm2'``, ``'fc1'``, ``'fc2'`` of block ``layer``; ``'merge_norm'``,
        the norm of the patch merging that starts the stage whose first block is ``layer``
        (Swin); ``'position_bias'``, block ``layer``'s relative-position bias looked up in
        its (1, entries, H) table ``x`` (Swin); ``'patch_proj'`` (see ``patch_norm``),
        ``'patch_embed'`` and ``'norm'`` with ``layer`` None) on ``x``; asked only if
        :attr:`adapts_ops`."""
        return module(x)

    def branch(self, ctx, layer, name, x, out):
        """Block ``layer``'s ``name`` branch (``'attn'`` or ``'mlp'``) output ``out`` as it
        joins the residual stream ``x`` (``x + out``)."""
        return out

    def wants_cls_attention(self, layer):
        """Whether :meth:`after_block` of block ``layer`` needs the CLS attention row."""
        return False

    def after_block(self, ctx, layer, x, cls_attention, image_start):
        """Block ``layer``'s output sequence ``x`` updated, given the CLS query's attention
        over the image tokens (B, N) and where they start in ``x``."""
        return x

    def derive_from_frozen(self, backbone):
        """(Re)computes exactly :attr:`derived_from_frozen` from ``backbone``'s current frozen
        weights. The backbone calls it when it is built and once ``init_cfg`` has loaded;
        ``mmvpt.FrozenInitHook`` when ``load_from`` brought other frozen weights."""

    def extra_repr(self):
        return f'num_layers={self.num_layers}, embed_dim={self.embed_dim}'


def display_name(prompt, frozen=True):
    """The name tables and reports give a model's tuning: its method's ``display_name`` (a
    built method, a ``dict(type=...)`` config or a class name), else linear probing
    (``frozen``) or full fine-tuning for no method."""
    if prompt is None:
        return 'Linear probing' if frozen else 'Full fine-tuning'
    if isinstance(prompt, PromptMethod):
        return prompt.display_name or type(prompt).__name__
    options = dict(prompt) if isinstance(prompt, dict) else dict(type=prompt)
    name = str(options.pop('type')).split('.')[-1]
    from mmvpt.registry import MODELS  # the methods register on import of mmvpt.models
    method = MODELS.get(name)
    if method is None:
        return name
    return (method.name_for(**options) if hasattr(method, 'name_for')
            else (method.display_name or name))


def method_options(method_class):
    """The options a user may set on ``method_class``: its constructor's named arguments
    and those of the classes it passes ``**kwargs`` on to, less what the backbone fills in
    (``PromptMethod``'s own)."""
    options = set()
    for cls in method_class.__mro__:
        if cls is PromptMethod or cls is nn.Module or cls is object:
            break
        params = inspect.signature(cls.__init__).parameters.values()
        options.update(p.name for p in params
                       if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    options.discard('self')
    return options


def check_method_options(method_class, cfg):
    """Fails for an option ``method_class`` does not take, naming the method, the closest
    valid option (for another method's option: how a config switches methods) and all of
    them (rather than a ``TypeError`` of a base constructor)."""
    options = method_options(method_class)
    unknown = sorted(set(cfg) - options - {'type'})
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, options, n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    name = method_class.__name__
    # An option of another method: most likely inherited from a config of that method,
    # since MMEngine merges a new prompt=dict(type=...) into the inherited one.
    from mmvpt.models.methods import method_classes
    owners = [cls.__name__ for cls in method_classes()
              if cls is not method_class and key in method_options(cls)]
    if owners:
        base = (f' or inherit configs/_base_/methods/{method_class.config_folder}.py (its '
                'recipe and hooks)' if method_class.config_folder else '')
        hint = (f", an option of {' / '.join(owners)}: a config switching methods replaces the "
                f"inherited prompt with prompt=dict(_delete_=True, type='mmvpt.{name}', ...)"
                f'{base}')
    raise ValueError(f'{name} has no option {key!r}{hint} '
                     f'({name} options: {", ".join(sorted(options))})')


def _per_layer(name, value, num_layers):
    values = (value, ) * num_layers if isinstance(value, int) else tuple(value)
    if len(values) != num_layers:
        raise ValueError(f'{name}={value!r}: need one value per block ({num_layers})')
    return values


def vpt_init_bound(patch_size, dim):
    """VPT's uniform init bound sqrt(6 / (3 * patch^2 + D)): 0.0625 for ViT-B/16."""
    return math.sqrt(6. / float(3 * patch_size * patch_size + dim))


def vpt_uniform(patch_size):
    """A per-layer tensor init: VPT's uniform(-v, v), v from the prompts' width (the
    tensor's last dimension)."""
    def init(tensor):
        bound = vpt_init_bound(patch_size, tensor.shape[-1])
        nn.init.uniform_(tensor, -bound, bound)
    return init


def each_layer(init):
    """A per-layer tensor init that runs ``init`` on each layer's slice (its fan-in and
    fan-out are a layer's, not the whole tensor's)."""
    def init_layers(tensor):
        for layer in tensor:
            init(layer)
    return init_layers


def check_choices(owner, **options):
    """``check_choices('CVPT', ca_init=(value, CHOICES), ...)``: a clear error for the
    first option whose value is not among its choices."""
    for name, (value, choices) in options.items():
        if value not in choices:
            raise ValueError(f'{owner} {name}={value!r}: choose one of {tuple(choices)}')


def drop_prompts(prompts, batch_size, p, mode, training):
    """Dropout on (1, P, D) prompts, returning them (1, P, D) when every sample sees the
    same prompts (eval, no dropout, or ``mode='batch'``) and (B, P, D) for per-sample
    dropout (``mode='sample'``, what the authors' code does)."""
    if not training or p == 0:
        return prompts
    if mode == 'batch':
        return F.dropout(prompts, p, True)
    return F.dropout(prompts.expand(batch_size, -1, -1), p, True)


def check_positive(name, value, allow_zero=False):
    if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f'{name}={value!r}: must be a {"non-negative" if allow_zero else "positive"} int')


def uniform_prompts(shape, bound):
    t = torch.empty(shape)
    nn.init.uniform_(t, -bound, bound)
    return nn.Parameter(t)
