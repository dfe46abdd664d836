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
What is measured, and how, is defined in :mod:`mmvpt.analysis.attention` (its docstring
defines every column); this script parses the command line, plots and prints.

Writes ``DIR/attention_share.csv`` (a row per model, block and query group),
``DIR/attention_share.png`` and prints a short table.

Plot: one line per model against the block index; panels: prompt share (visual + KV
prompts) of the CLS query and of the image queries, and, when any model is CVPT, the
CA/SA ratio and the cross-attention entropy (all queries; dotted: log P). PromptedSwin is
not supported: its attention is per window, so there is no per-image share of one softmax.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmvpt.analysis.attention import AnalysisError, by_model, measure_models, write_share_csv  # noqa: E402
from mmvpt.apis.inference import InputError  # noqa: E402

# The figure's size is fixed (inches x dpi): 2 panels per row, 1 row, or 2 with CVPT.
PANEL_SIZE = (5.0, 3.5)
DPI = 100


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
                logs = [r['log_num_prompts'] for r in model_rows
                        if r['log_num_prompts'] is not None]
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
    specs = [(args.config, checkpoint, label)
             for checkpoint, label in zip(args.checkpoints, labels)]
    for item in args.compare:
        parts = item.split(':', 2)
        if len(parts) < 2 or not all(parts[:2]):
            raise AnalysisError(f'--compare {item!r}: need CONFIG:CHECKPOINT[:LABEL]')
        specs.append((parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None))
    return specs


def main(argv=None):
    args = parse_args(argv)
    try:
        rows = measure_models(model_specs(args), args.split, args.num_images, args.batch_size,
                              args.cfg_options, args.device)
    except (AnalysisError, InputError) as err:
        sys.exit(f'attention_share: {err}')
    os.makedirs(args.out, exist_ok=True)
    csv_path = osp.join(args.out, 'attention_share.csv')
    png_path = osp.join(args.out, 'attention_share.png')
    write_share_csv(rows, csv_path)
    plot(rows, png_path)
    print(format_table(rows))
    print(f'wrote {csv_path} and {png_path}')
    return rows


if __name__ == '__main__':
    main()
