"""Where a prompted ViT's attention goes: per block, the share of the attention mass that
the CLS query and the image-token queries put on prompts, KV prompts, the prefix tokens and
the image; for CVPT, how large the cross-attention term is next to the self-attention term;
and the CLS attention over the image patches with the prompts and without them.

Everything is read through :func:`mmvpt.models.utils.probe_attention`, i.e. from the very
attention functions the model runs. A model without a prompt method (linear probing, full
fine-tuning) runs its blocks through the same function with a neutral
:class:`~mmvpt.models.prompts.PromptMethod` (every extension point a no-op), which computes
what timm's blocks compute (tests/test_analysis/test_attention.py checks it to 1e-6).
PromptedSwin is not supported: its attention is per window, so there is no per-image share
of one softmax.

What :func:`compute_shares` measures, per block, for each query group:

- query groups: ``cls`` (the CLS query), ``image`` (every image-token query), ``all`` (every
  query of the sequence: prefix tokens, carried VPT-shallow prompts, image tokens);
- key groups of the self-attention softmax: ``prompt`` (visual prompt keys: VPT / E2VPT /
  iVPT prompts, the carried prompts of VPT-shallow), ``kv`` (E2VPT key-value prompts),
  ``prefix`` (CLS and register tokens) and ``image``. A share is the attention probability
  summed over the group's keys, averaged over heads and the group's queries per image, then
  over images; the four shares of a row sum to 1. CVPT's prompts never enter the
  self-attention, so its self-attention shares on prompts are 0: its prompts act through the
  cross-attention columns below;
- CVPT (blank for other methods): ``ca_sa_ratio`` = ||CA(x)||_F / ||SA(x)||_F per image, the
  Frobenius norms over the group's tokens and all channels of the two terms the block adds
  to the token stream (CA after its output projection; SA = the self-attention branch after
  its output projection and the block's layer scale, drop-path being off in eval), then the
  mean over images; ``ca_entropy`` = entropy (nats) of the cross-attention distribution
  over the P prompts, mean over heads, the group's queries and images. Its maximum is
  ``log_num_prompts`` = log P (uniform attention over the prompts).

Rows (and the columns of ``attention_share.csv``, :data:`SHARE_COLUMNS`): model (label),
config, checkpoint, method, num_prompts (visual / CVPT prompts per block; 0 without),
num_kv_tokens, block, query_group, num_queries (per image), num_images, share_prompt,
share_kv, share_prefix, share_image, ca_sa_ratio, ca_entropy, log_num_prompts.

:func:`attention_maps`: the CLS query's attention probability on each image patch (softmax
over all keys, mean over heads), renormalised over the image patches, with the prompts (the
tuned model) and without them (the same model with its prompt method swapped for the
neutral one), and for iVPT the image tokens its attentive reinforcement picked.
"""
import csv
import math
import os.path as osp
from collections import defaultdict
from contextlib import contextmanager

import torch

from mmvpt.models import PromptedSwin, PromptedViT, PromptMethod
from mmvpt.models.prompts import display_name
from mmvpt.models.utils import probe_attention
from mmvpt.models.utils.attention import num_keys

QUERY_GROUPS = ('cls', 'image', 'all')
KEY_GROUPS = ('prompt', 'kv', 'prefix', 'image')
SHARE_COLUMNS = ('model', 'config', 'checkpoint', 'method', 'num_prompts', 'num_kv_tokens',
                 'block', 'query_group', 'num_queries', 'num_images', 'share_prompt', 'share_kv',
                 'share_prefix', 'share_image', 'ca_sa_ratio', 'ca_entropy', 'log_num_prompts')


class AnalysisError(ValueError):
    """A model or an input the analysis cannot measure, said in one line."""


# -- the model -------------------------------------------------------------------------------
def prompted_vit(model):
    """The :class:`PromptedViT` of ``model`` (a classifier / segmentor or the backbone)."""
    backbone = getattr(model, 'backbone', model)
    if isinstance(backbone, PromptedSwin):
        raise AnalysisError('PromptedSwin: window attention shares are not supported (Swin '
                            'attends within windows, so there is no one softmax per image to '
                            'share out); use a PromptedViT model')
    if not isinstance(backbone, PromptedViT):
        raise AnalysisError(f'the model\'s backbone is a {type(backbone).__name__}; the attention '
                            'analysis reads mmvpt.PromptedViT backbones only')
    if getattr(backbone.prompt, 'num_tasks', None) is not None:
        raise AnalysisError('the prompt method holds several stacked tasks; analyse each task\'s '
                            'own checkpoint')
    return backbone


def neutral_method(backbone):
    """A :class:`PromptMethod` base instance for ``backbone``: no tokens, no KV prompts, no
    cross-attention, no update. With it as ``backbone.prompt`` every block runs through
    :func:`mmvpt.models.utils.attention.self_attention` and computes what the plain timm
    block computes."""
    vit = backbone.vit
    attn = vit.blocks[0].attn
    return PromptMethod(num_layers=backbone.num_layers, embed_dim=backbone.embed_dims,
                        num_heads=attn.num_heads, patch_size=vit.patch_embed.patch_size[0],
                        qkv_bias=attn.qkv.bias is not None, has_cls_token=vit.cls_token is not None)


@contextmanager
def swap_prompt(backbone, method):
    """``backbone.prompt`` is ``method`` inside the block, the original again after it."""
    original = backbone.prompt
    backbone.prompt = method
    try:
        yield backbone
    finally:
        backbone.prompt = original


@contextmanager
def probed_blocks(backbone):
    """The backbone as it is, or, without a prompt method, with :func:`neutral_method` so its
    blocks report to the probe too."""
    if backbone.prompt is not None:
        yield backbone
    else:
        with swap_prompt(backbone, neutral_method(backbone)):
            yield backbone


def describe(backbone):
    """(method name, prompts per block P, KV prompts per block, default label): the name is
    :func:`~mmvpt.models.prompts.display_name`'s, the label adds the method's sizes."""
    method = backbone.prompt
    name = display_name(method, frozen=backbone.frozen)
    if method is None:
        return name, 0, 0, name
    P = getattr(method, 'num_tokens', 0)
    num_kv = getattr(method, 'num_kv_tokens', 0)
    label = f'{name} P={P}'
    if hasattr(method, 'num_kv_tokens'):
        label += f' KV={num_kv}'
    if hasattr(method, 'num_ar_tokens'):
        label += f' k={method.num_ar_tokens}'
    return name, P, num_kv, label


def kv_counts(method, layer):
    """(before, after): how many key-value prompts (E²VPT's) block ``layer`` joins before and
    after the sequence's keys, from the method's own ``kv`` extension point."""
    if method is None:
        return 0, 0
    return tuple(num_keys(kv) for kv in method.kv(method.start(1), layer))


def key_groups(backbone, layer, num_tokens, num_image, num_before, num_after):
    """{key group: [slices of the K keys]} of block ``layer``'s self-attention, whose keys are
    [``num_before`` extra, the ``num_tokens`` tokens, ``num_after`` extra] and whose tokens are
    [prefix, carried prompts, ``num_image`` image tokens]. The extra keys before the tokens
    are [key-value prompts, the block's prompts as keys and values only]; those after, the
    key-value prompts placed there."""
    prefix = backbone.vit.num_prefix_tokens
    carried = num_tokens - prefix - num_image
    kv_before, kv_after = kv_counts(backbone.prompt, layer)
    if carried < 0 or num_before < kv_before or num_after != kv_after:
        raise AnalysisError(
            f'block {layer}: keys [{num_before} extra, {num_tokens} tokens, {num_after} extra] '
            f'do not fit {prefix} prefix + {num_image} image tokens and {kv_before} + {kv_after} '
            'KV prompts (before + after the tokens)')
    start = num_before  # of the token keys
    image_start = start + prefix + carried
    end = start + num_tokens
    return dict(prompt=[slice(kv_before, num_before), slice(start + prefix, image_start)],
                kv=[slice(0, kv_before), slice(end, end + num_after)],
                prefix=[slice(start, start + prefix)], image=[slice(image_start, end)])


def query_groups(backbone, num_tokens, num_image):
    """{query group: slice of the N queries}; no ``cls`` group without a CLS token."""
    groups = dict(image=slice(num_tokens - num_image, num_tokens), all=slice(0, num_tokens))
    if backbone.vit.cls_token is not None:
        groups = dict(cls=slice(0, 1), **groups)
    return groups


def num_image_tokens(backbone, inputs):
    patch = backbone.vit.patch_embed.patch_size
    return (inputs.shape[-2] // patch[0]) * (inputs.shape[-1] // patch[1])


class Probe:
    """Collects one forward's probe records by block: ``self`` / ``cross`` (probs, output,
    ...), ``reinforced`` (iVPT: the image tokens AR reinforced)."""

    def __init__(self, backbone):
        self.block_of = {id(b.attn): i for i, b in enumerate(backbone.blocks)}
        cross = getattr(backbone.prompt, 'cross_attn', None)
        self.cross_of = dict(self.block_of)
        if cross is not None:  # CVPT's own cross-attention copies
            self.cross_of.update({id(ca): i for i, ca in enumerate(cross)})
        self.method = backbone.prompt
        self.records = dict(self={}, cross={}, reinforced={})

    def __call__(self, kind, record):
        if kind == 'reinforced':
            if record['method'] is self.method:
                self.records[kind][record['layer']] = record['indices'].detach()
            return
        index = (self.block_of if kind == 'self' else self.cross_of).get(id(record['attn']))
        if index is None:
            return  # an attention of another model
        if index in self.records[kind]:
            raise AnalysisError(f'block {index} reported its {kind}-attention twice in one forward')
        self.records[kind][index] = record

    def clear(self):
        for records in self.records.values():
            records.clear()


@contextmanager
def probing(backbone):
    probe = Probe(backbone)
    with probe_attention(backbone, probe):
        yield probe


# -- the measurements ------------------------------------------------------------------------
def _entropy(probs):
    """Entropy (nats) over the last dim, 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def batch_statistics(backbone, probe, num_image):
    """{(block, query group): {statistic: (B,) per-image values}} of one forward."""
    out = {}
    for layer, record in sorted(probe.records['self'].items()):
        probs = record['probs'].float()
        B, H, N, K = probs.shape
        keys = key_groups(backbone, layer, N, num_image, record['num_before'], record['num_after'])
        cross = probe.records['cross'].get(layer)
        sa = backbone.blocks[layer].ls1(record['output'].float()) if cross is not None else None
        for group, queries in query_groups(backbone, N, num_image).items():
            rows = probs[:, :, queries]  # (B, H, n, K)
            stats = {f'share_{name}': sum((rows[..., s].sum(-1) for s in slices),
                                          rows.new_zeros(rows.shape[:-1])).mean((1, 2))
                     for name, slices in keys.items()}
            if cross is not None:
                ca = cross['output'].float()[:, queries]
                stats['ca_sa_ratio'] = (ca.flatten(1).norm(dim=1)
                                        / sa[:, queries].flatten(1).norm(dim=1))
                stats['ca_entropy'] = _entropy(cross['probs'].float()[:, :, queries]).mean((1, 2))
                stats['log_num_prompts'] = torch.full((B, ), math.log(cross['probs'].shape[-1]))
            stats['num_queries'] = torch.full((B, ), float(rows.shape[2]))
            out[(layer, group)] = stats
    if probe.records['cross'].keys() - probe.records['self'].keys():
        raise AnalysisError('a cross-attention reported for a block without self-attention record')
    return out


@torch.no_grad()
def compute_shares(model, batches):
    """Attention shares of ``model`` (a model with a PromptedViT ``backbone`` or the backbone)
    over ``batches`` of preprocessed images ((B, 3, H, W) tensors), in eval mode.

    Returns one dict per (block, query group), in block order, with the CSV columns from
    ``method`` on: per-image values averaged over every image of every batch."""
    backbone = prompted_vit(model)
    method_name, P, num_kv, _ = describe(backbone)
    was_training = backbone.training
    backbone.eval()
    sums, num_images = defaultdict(lambda: defaultdict(float)), 0
    try:
        with probed_blocks(backbone), probing(backbone) as probe:
            for inputs in batches:
                probe.clear()
                backbone(inputs)
                stats = batch_statistics(backbone, probe, num_image_tokens(backbone, inputs))
                for key, values_of in stats.items():
                    for name, values in values_of.items():
                        sums[key][name] += values.double().sum().item()
                num_images += inputs.shape[0]
    finally:
        backbone.train(was_training)
    if not num_images:
        raise AnalysisError('no images to measure')
    rows = []
    order = sorted(sums.items(), key=lambda item: (item[0][0], QUERY_GROUPS.index(item[0][1])))
    for (layer, group), stats in order:
        mean = {name: value / num_images for name, value in stats.items()}
        row = dict(method=method_name, num_prompts=P, num_kv_tokens=num_kv, block=layer,
                   query_group=group, num_queries=int(round(mean.pop('num_queries'))),
                   num_images=num_images)
        row.update({f'share_{g}': mean[f'share_{g}'] for g in KEY_GROUPS})
        row.update({k: mean.get(k) for k in ('ca_sa_ratio', 'ca_entropy', 'log_num_prompts')})
        rows.append(row)
    return rows


# -- CLS attention maps -------------------------------------------------------------------
def resolve_blocks(blocks, num_layers):
    """Block indices >= 0 of ``blocks`` (negative ones count from the end)."""
    resolved = []
    for block in blocks:
        if not -num_layers <= block < num_layers:
            raise AnalysisError(f'--blocks {block}: the backbone has {num_layers} blocks')
        resolved.append(block % num_layers)
    return resolved


def cls_maps(backbone, probe, blocks, grid):
    """{block: ((B, gh, gw) CLS attention renormalised over the image patches, (B,) share of
    the CLS attention on image keys)} from one forward's probe records."""
    num_image = grid[0] * grid[1]
    maps = {}
    for block in blocks:
        record = probe.records['self'].get(block)
        if record is None:
            raise AnalysisError(f'block {block} did not run (the backbone stops after its last '
                                'out_indices block)')
        probs = record['probs'].float()
        image = key_groups(backbone, block, probs.shape[2], num_image, record['num_before'],
                           record['num_after'])['image'][0]
        row = probs[:, :, 0, image].mean(1)  # (B, image keys): mean over heads
        share = row.sum(-1)
        maps[block] = ((row / share[:, None]).view(-1, *grid), share)
    return maps


@torch.no_grad()
def attention_maps(model, inputs, blocks):
    """CLS attention over the image patches at ``blocks`` (indices >= 0) of ``model`` on the
    preprocessed ``inputs`` (B, 3, H, W), with the prompts and without.

    Returns dict(grid=(gh, gw), prompted={block: (maps, shares)}, frozen={...},
    reinforced={layer: (B, k) image-token indices in rank order} (iVPT's AR; else empty))."""
    backbone = prompted_vit(model)
    if backbone.vit.cls_token is None:
        raise AnalysisError(f'{backbone.arch} has no CLS token: there is no CLS attention to show')
    patch = backbone.vit.patch_embed.patch_size
    grid = (inputs.shape[-2] // patch[0], inputs.shape[-1] // patch[1])
    assert grid[0] * grid[1] == num_image_tokens(backbone, inputs)
    was_training = backbone.training
    backbone.eval()
    try:
        with probed_blocks(backbone), probing(backbone) as probe:
            backbone(inputs)
            prompted = cls_maps(backbone, probe, blocks, grid)
            reinforced = dict(probe.records['reinforced'])
        with swap_prompt(backbone, neutral_method(backbone)), probing(backbone) as probe:
            backbone(inputs)
            frozen = cls_maps(backbone, probe, blocks, grid)
    finally:
        backbone.train(was_training)
    return dict(grid=grid, prompted=prompted, frozen=frozen, reinforced=reinforced)


# -- models, rows and their CSV ------------------------------------------------------------
def measure_models(specs, split='val', num_images=64, batch_size=None, cfg_options=None,
                   device='cpu'):
    """Attention shares of every model ``specs`` names, [(config, checkpoint, label or
    None)], each built and loaded by :func:`mmvpt.apis.inference.load_model` and run on the
    first ``num_images`` images of its config's ``{split}_dataloader`` dataset. Returns the
    rows of every model, in order, with the columns of :data:`SHARE_COLUMNS`: a model's label
    is the given one, else its :func:`describe` label, the checkpoint's name added where
    those collide. Every named file must exist before any model loads."""
    from mmvpt.apis.inference import dataset_batches, load_model
    for config, checkpoint, _ in specs:
        for kind, path in (('config', config), ('checkpoint', checkpoint)):
            if not osp.isfile(path):
                raise AnalysisError(f'{kind} file {path!r} does not exist')
    measured = []
    for config, checkpoint, label in specs:
        model, cfg = load_model(config, checkpoint, cfg_options, device)
        default = describe(prompted_vit(model))[3]
        rows = compute_shares(model, dataset_batches(cfg, model, split, num_images, batch_size))
        measured.append(((label, default, checkpoint), config, rows))
        del model
    all_rows = []
    for label, ((_, _, checkpoint), config, rows) in zip(
            unique_labels([m[0] for m in measured]), measured):
        all_rows += [dict(row, model=label, config=config, checkpoint=checkpoint) for row in rows]
    return all_rows


def unique_labels(models):
    """Labels of ``models`` ([(label or None, default label, checkpoint)]): the given ones,
    else the default, with the checkpoint's name added where defaults collide."""
    first = [given or default for given, default, _ in models]
    labels = [label if given is not None or first.count(label) == 1
              else f'{default} ({osp.splitext(osp.basename(checkpoint))[0]})'
              for label, (given, default, checkpoint) in zip(first, models)]
    seen = defaultdict(int)
    result = []
    for label in labels:
        seen[label] += 1
        result.append(label if seen[label] == 1 else f'{label} #{seen[label]}')
    return result


def write_share_csv(rows, path):
    """``rows`` (:func:`measure_models`) as ``attention_share.csv``."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=SHARE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if row.get(k) is None else row[k] for k in SHARE_COLUMNS})


def read_share_csv(path):
    """Rows of an ``attention_share.csv`` with numbers as numbers (None where blank)."""
    ints = ('num_prompts', 'num_kv_tokens', 'block', 'num_queries', 'num_images')
    rows = []
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key in ints:
                    row[key] = int(value)
                elif key.startswith(('share_', 'ca_', 'log_')):
                    row[key] = float(value) if value != '' else None
            rows.append(row)
    return rows


def by_model(rows):
    """{model label: its rows}, in the order the models come."""
    models = {}
    for row in rows:
        models.setdefault(row['model'], []).append(row)
    return models
