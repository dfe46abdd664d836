"""Where the attention goes: per block, the share of the attention mass that the CLS query
and the image-token queries put on prompts, KV prompts, the prefix tokens and the image,
and for CVPT how large the cross-attention term is next to the self-attention term.

    python tools/analysis/attention_share.py CONFIG CHECKPOINT [CHECKPOINT ...]
        [--compare CONFIG:CHECKPOINT[:LABEL] ...] [--labels LABEL ...]
        [--split val|test|train] [--num-images N] [--batch-size B] [--out DIR]
        [--device DEVICE] [--cfg-options k=v ...]

Every CHECKPOINT of CONFIG, and every ``--compare`` pair, is one model (one line per plot):
VPT-deep against CVPT at P = 10 / 50 / 200 is one command. Each model is built from its
config and loaded as ``tools/test.py`` would (``MODELS.build`` + MMEngine's
``load_checkpoint``; tuned-only checkpoints get the frozen backbone of the config's
``model.backbone.init_cfg``), and runs in eval mode on the first N images of the config's
``{split}_dataloader`` dataset (in dataset order, through the config's data preprocessor).
The attention is read through :func:`mmvpt.models.utils.probe_attention`, i.e. from the
very attention functions the model runs. A model without a prompt method (linear probing,
full fine-tuning) runs its blocks through the same function with a neutral
:class:`~mmvpt.models.prompts.PromptMethod` (every extension point a no-op), which computes
what timm's blocks compute (tests/test_attention_analysis.py checks it to 1e-6).

Writes ``DIR/attention_share.csv``, ``DIR/attention_share.png`` and prints a short table.

What is measured, per block, for each query group:

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

CSV columns: model (label), config, checkpoint, method, num_prompts (visual / CVPT prompts
per block; 0 without), num_kv_tokens, block, query_group, num_queries (per image),
num_images, share_prompt, share_kv, share_prefix, share_image, ca_sa_ratio, ca_entropy,
log_num_prompts.

Plot: one line per model against the block index; panels: prompt share (visual + KV
prompts) of the CLS query and of the image queries, and, when any model is CVPT, the
CA/SA ratio and the cross-attention entropy (all queries; dotted: log P). PromptedSwin is
not supported: its attention is per window, so there is no per-image share of one softmax.
"""
import argparse
import csv
import math
import os
import os.path as osp
import sys
from collections import defaultdict
from contextlib import contextmanager

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be
import torch  # noqa: E402

from mmengine.config import DictAction  # noqa: E402
from mmvpt.models import PromptedSwin, PromptedViT, PromptMethod  # noqa: E402
from mmvpt.models.utils import probe_attention  # noqa: E402

QUERY_GROUPS = ('cls', 'image', 'all')
KEY_GROUPS = ('prompt', 'kv', 'prefix', 'image')
COLUMNS = ('model', 'config', 'checkpoint', 'method', 'num_prompts', 'num_kv_tokens', 'block',
           'query_group', 'num_queries', 'num_images', 'share_prompt', 'share_kv',
           'share_prefix', 'share_image', 'ca_sa_ratio', 'ca_entropy', 'log_num_prompts')
# The figure's size is fixed (inches x dpi): 2 panels per row, 1 row, or 2 with CVPT.
PANEL_SIZE = (5.0, 3.5)
DPI = 100


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
    """(method name, prompts per block P, KV prompts per block, default label)."""
    method = backbone.prompt
    if method is None:
        name = 'Linear probing' if backbone.frozen else 'Full fine-tuning'
        return name, 0, 0, name
    kind = type(method).__name__
    P = getattr(method, 'num_tokens', 0)
    num_kv = getattr(method, 'num_kv_tokens', 0)
    if kind == 'VPT':
        name = 'VPT-deep' if method.deep else 'VPT-shallow'
        return name, P, 0, f'{name} P={P}'
    if kind == 'E2VPT':
        return kind, P, num_kv, f'E2VPT P={P} KV={num_kv}'
    if kind == 'IVPT':
        return 'iVPT', P, 0, f'iVPT P={P} k={method.num_ar_tokens}'
    return kind, P, num_kv, f'{kind} P={P}'


def kv_count(method, layer):
    """E2VPT key-value prompts of block ``layer`` (0 without), from the method's own
    ``kv`` extension point."""
    if method is None:
        return 0
    kv = method.kv(method.start(1), layer)
    return 0 if kv is None else kv[0].shape[-2]


def key_groups(backbone, layer, num_tokens, num_image, num_before, num_after):
    """{key group: [slices of the K keys]} of block ``layer``'s self-attention, whose keys are
    [``num_before`` extra, the ``num_tokens`` tokens, ``num_after`` extra] and whose tokens are
    [prefix, carried prompts, ``num_image`` image tokens]."""
    method = backbone.prompt
    prefix = backbone.vit.num_prefix_tokens
    carried = num_tokens - prefix - num_image
    num_kv = kv_count(method, layer)
    kv_first = method is None or method.kv_first
    if carried < 0 or (kv_first and (num_after or num_before < num_kv)) or \
            (not kv_first and num_after != num_kv):
        raise AnalysisError(
            f'block {layer}: keys [{num_before} extra, {num_tokens} tokens, {num_after} extra] '
            f'do not fit {prefix} prefix + {num_image} image tokens and {num_kv} KV prompts '
            f'({"before" if kv_first else "after"} the tokens)')
    start = num_before  # of the token keys
    image_start = start + prefix + carried
    if kv_first:
        kv, visual = [slice(0, num_kv)], slice(num_kv, num_before)
    else:
        kv, visual = [slice(start + num_tokens, start + num_tokens + num_after)], slice(0, num_before)
    return dict(prompt=[visual, slice(start + prefix, image_start)], kv=kv,
                prefix=[slice(start, start + prefix)], image=[slice(image_start, start + num_tokens)])


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
    with probe_attention(probe):
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
                stats['ca_sa_ratio'] = ca.flatten(1).norm(dim=1) / sa[:, queries].flatten(1).norm(dim=1)
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


# -- loading ---------------------------------------------------------------------------------
def load_model(config, checkpoint, cfg_options=None, device='cpu'):
    """(model in eval mode, config) as tools/test.py builds and loads it: a tuned-only
    checkpoint gets the frozen backbone of ``model.backbone.init_cfg``."""
    import importlib

    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from mmvpt.apis import prepare_config
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    cfg = prepare_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    model_cfg = cfg.model
    if cfg.get('data_preprocessor') is not None:  # as MMEngine's runner does
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = registry.MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    return model.to(device).eval(), cfg


def dataset_batches(cfg, model, split='val', num_images=64, batch_size=None):
    """The first ``num_images`` images of the config's ``{split}_dataloader`` dataset, in
    order, batched through the model's data preprocessor: (B, 3, H, W) tensors."""
    import importlib

    from mmengine.dataset import pseudo_collate
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        raise AnalysisError(f'{cfg.filename} has no {split}_dataloader dataset')
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    dataset = registry.DATASETS.build(loader['dataset'])
    count = min(num_images, len(dataset))
    if count == 0:
        raise AnalysisError(f'the {split} dataset of {cfg.filename} is empty')
    batch_size = batch_size or min(loader.get('batch_size', 16), 32)
    for start in range(0, count, batch_size):
        batch = pseudo_collate([dataset[i] for i in range(start, min(start + batch_size, count))])
        with torch.no_grad():
            yield model.data_preprocessor(batch, False)['inputs']


# -- output ----------------------------------------------------------------------------------
def write_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if row.get(k) is None else row[k] for k in COLUMNS})


def read_csv(path):
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
    models = {}
    for row in rows:
        models.setdefault(row['model'], []).append(row)
    return models


def figure_pixels(rows):
    """(width, height) in pixels of the plot of ``rows``."""
    num_rows = 2 if any(r.get('ca_sa_ratio') is not None for r in rows) else 1
    return int(round(2 * PANEL_SIZE[0] * DPI)), int(round(num_rows * PANEL_SIZE[1] * DPI))


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    width, height = figure_pixels(rows)
    num_rows = height // int(round(PANEL_SIZE[1] * DPI))
    fig, axes = plt.subplots(num_rows, 2, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False)
    panels = [(axes[0][0], 'cls', lambda r: r['share_prompt'] + r['share_kv'],
               'CLS query: share on prompts'),
              (axes[0][1], 'image', lambda r: r['share_prompt'] + r['share_kv'],
               'image queries: share on prompts')]
    if num_rows == 2:
        panels += [(axes[1][0], 'all', lambda r: r['ca_sa_ratio'], 'CVPT: ||CA(x)|| / ||SA(x)||'),
                   (axes[1][1], 'all', lambda r: r['ca_entropy'], 'CVPT: CA entropy (nats)')]
    for ax, group, value, title in panels:
        for index, (label, model_rows) in enumerate(by_model(rows).items()):
            points = [(r['block'], value(r)) for r in model_rows if r['query_group'] == group]
            points = [(b, v) for b, v in points if v is not None]
            if not points:
                continue
            color = f'C{index % 10}'
            ax.plot(*zip(*points), marker='o', markersize=3, label=label, color=color)
            if title.startswith('CVPT: CA entropy'):
                logs = [r['log_num_prompts'] for r in model_rows if r['log_num_prompts'] is not None]
                ax.axhline(logs[0], color=color, linestyle=':', linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('block', fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12 / num_rows, top=1 - 0.09 / num_rows,
                        wspace=0.2, hspace=0.45)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def format_table(rows):
    """A short text table: prompt shares (visual + KV) of the CLS and image queries and,
    for CVPT, CA/SA and the CA entropy, per model and block."""
    lines = []
    for label, model_rows in by_model(rows).items():
        get = {(r['block'], r['query_group']): r for r in model_rows}
        blocks = sorted({r['block'] for r in model_rows})
        cvpt = any(r['ca_sa_ratio'] is not None for r in model_rows)
        header = 'block  CLS->prompts  CLS->KV  img->prompts  img->KV'
        if cvpt:
            header += f'  CA/SA  H(CA) (log P = {model_rows[0]["log_num_prompts"]:.3f})'
        lines += [f'{label} ({model_rows[0]["num_images"]} images)', header]
        for b in blocks:
            cls, img, every = get.get((b, 'cls')), get[(b, 'image')], get[(b, 'all')]
            cells = [f'{b:5d}',
                     f'{cls["share_prompt"]:12.4f}' if cls else f'{"-":>12}',
                     f'{cls["share_kv"]:8.4f}' if cls else f'{"-":>8}',
                     f'{img["share_prompt"]:13.4f}', f'{img["share_kv"]:8.4f}']
            if cvpt:
                cells += [f'{every["ca_sa_ratio"]:6.3f}', f'{every["ca_entropy"]:6.3f}']
            lines.append('  '.join(cells))
        lines.append('')
    return '\n'.join(lines)


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Attention shares of prompts, prefix and image tokens per block')
    parser.add_argument('config', help='config of the CHECKPOINTs')
    parser.add_argument('checkpoints', nargs='+', metavar='CHECKPOINT')
    parser.add_argument('--compare', nargs='+', default=[], metavar='CONFIG:CHECKPOINT[:LABEL]',
                        help='more models, each with its own config')
    parser.add_argument('--labels', nargs='+', help='labels of the CHECKPOINTs, in order')
    parser.add_argument('--split', default='val', choices=('val', 'test', 'train'))
    parser.add_argument('--num-images', type=int, default=64)
    parser.add_argument('--batch-size', type=int, help="default: the loader's, at most 32")
    parser.add_argument('--out', default='work_dirs/attention_share', help='output folder')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, key=value pairs')
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.checkpoints):
        parser.error(f'--labels: {len(args.labels)} labels for {len(args.checkpoints)} checkpoints')
    if args.num_images < 1:
        parser.error('--num-images must be positive')
    return args


def model_specs(args):
    """[(config, checkpoint, label or None)] of the command line, in order."""
    labels = args.labels or [None] * len(args.checkpoints)
    specs = [(args.config, c, l) for c, l in zip(args.checkpoints, labels)]
    for item in args.compare:
        parts = item.split(':', 2)
        if len(parts) < 2 or not all(parts[:2]):
            raise AnalysisError(f'--compare {item!r}: need CONFIG:CHECKPOINT[:LABEL]')
        specs.append((parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None))
    return specs


def main(argv=None):
    args = parse_args(argv)
    try:
        specs = model_specs(args)
        for config, checkpoint, _ in specs:  # all named files exist before any model loads
            for kind, path in (('config', config), ('checkpoint', checkpoint)):
                if not osp.isfile(path):
                    raise AnalysisError(f'{kind} file {path!r} does not exist')
        measured = []
        for config, checkpoint, label in specs:
            model, cfg = load_model(config, checkpoint, args.cfg_options, args.device)
            backbone = prompted_vit(model)
            default = describe(backbone)[3]
            rows = compute_shares(model, dataset_batches(cfg, model, args.split, args.num_images,
                                                         args.batch_size))
            measured.append(((label, default, checkpoint), config, rows))
            del model, backbone
    except AnalysisError as err:
        sys.exit(f'attention_share: {err}')
    all_rows = []
    for label, ((_, _, checkpoint), config, rows) in zip(
            unique_labels([m[0] for m in measured]), measured):
        for row in rows:
            all_rows.append(dict(row, model=label, config=config, checkpoint=checkpoint))
    os.makedirs(args.out, exist_ok=True)
    csv_path, png_path = osp.join(args.out, 'attention_share.csv'), osp.join(args.out, 'attention_share.png')
    write_csv(all_rows, csv_path)
    plot(all_rows, png_path)
    print(format_table(all_rows))
    print(f'wrote {csv_path} and {png_path}')
    return all_rows


if __name__ == '__main__':
    main()
