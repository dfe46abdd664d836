"""Where the CLS token looks, with the prompts and without them: one PNG per image.

    python tools/analysis/visualize_attention.py CONFIG CHECKPOINT IMAGE [IMAGE ...]
        --out DIR [--blocks -1 ...] [--device DEVICE] [--cfg-options k=v ...]

Each image goes through the config's test pipeline and data preprocessor, as
``tools/test.py`` feeds it. ``DIR/<image name>.png`` is a grid with a row per block in
``--blocks`` (negative counts from the end; default: the last) and the columns

1. the input as the model sees it (the preprocessed tensor, un-normalised);
2. the CLS attention over the image patches with the prompts (the tuned model);
3. the same without the prompts: the frozen backbone, i.e. the same model with its prompt
   method swapped for a neutral :class:`~mmvpt.models.prompts.PromptMethod` (no tokens, no
   KV prompts, no cross-attention, no reinforcement). Both runs go through
   :func:`mmvpt.models.utils.attention.self_attention`, the function the model runs, and are
   read through :func:`~mmvpt.models.utils.probe_attention`; with the neutral method the
   blocks compute what timm's plain blocks (``prompt=None``) compute;
4. iVPT only: the image tokens that attentive reinforcement (AR) reinforced after that
   block, numbered by rank (AR runs after every block but the last: for the last block the
   panel shows the block before it).

A map is the CLS query's attention probability on each image patch (softmax over all keys,
mean over heads), renormalised over the image patches so that it shows where on the image
the CLS token looks; the panel title gives the share of the CLS attention that falls on the
image at all (the rest goes to the prompts, KV prompts and the CLS token). The patch maps
are upsampled (bilinear) to the input size and overlaid with one colour scale per row. The
maps come from :func:`mmvpt.analysis.attention.attention_maps`; this script draws them.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmvpt.analysis.attention import AnalysisError, attention_maps, prompted_vit, resolve_blocks  # noqa: E402
from mmvpt.apis.inference import InputError, load_model, preprocess_images  # noqa: E402

PANEL_INCHES = 2.4
DPI = 100


def figure_pixels(num_blocks, ivpt):
    """(width, height) in pixels of one image's grid."""
    side = int(round(PANEL_INCHES * DPI))
    return (4 if ivpt else 3) * side, num_blocks * side


def _upsample(patch_map, size):
    return F.interpolate(patch_map[None, None].float(), size=size, mode='bilinear',
                         align_corners=False)[0, 0].cpu().numpy()


def draw(picture, maps, blocks, path, index=0):
    """The grid of image ``index`` of ``maps`` (an :func:`attention_maps` result) to ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ivpt = bool(maps['reinforced'])
    width, height = figure_pixels(len(blocks), ivpt)
    cols = width // int(round(PANEL_INCHES * DPI))
    fig, axes = plt.subplots(len(blocks), cols, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False)
    size = picture.shape[:2]
    gh, gw = maps['grid']
    for row, block in enumerate(blocks):
        (prompted, p_share), (frozen, f_share) = maps['prompted'][block], maps['frozen'][block]
        overlays = [_upsample(m[index], size) for m in (prompted, frozen)]
        vmax = max(o.max() for o in overlays)
        axes[row][0].imshow(picture)
        axes[row][0].set_title(f'input, block {block}', fontsize=8)
        for ax, overlay, share, name in zip(axes[row][1:3], overlays, (p_share, f_share),
                                            ('with prompts', 'without prompts')):
            ax.imshow(picture)
            ax.imshow(overlay, cmap='jet', alpha=0.5, vmin=0, vmax=vmax)
            ax.set_title(f'block {block} {name}\nCLS on image: {share[index].item():.2f}',
                         fontsize=7)
        if ivpt:
            ax = axes[row][3]
            ax.imshow(picture)
            layer = block if block in maps['reinforced'] else max(
                (before for before in maps['reinforced'] if before <= block),
                default=min(maps['reinforced']))
            ph, pw = size[0] / gh, size[1] / gw
            for rank, token in enumerate(maps['reinforced'][layer][index].tolist()):
                r, c = divmod(token, gw)
                ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False,
                                       edgecolor='yellow', linewidth=1))
                ax.text(c * pw + pw / 2 - 0.5, r * ph + ph / 2 - 0.5, str(rank + 1), color='yellow',
                        fontsize=6, ha='center', va='center')
            top = len(maps['reinforced'][layer][index])
            ax.set_title(f'AR after block {layer}\n(top {top} tokens)', fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02 / len(blocks),
                        top=1 - 0.16 / len(blocks), wspace=0.05, hspace=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def output_names(paths):
    """One PNG name per image path: its stem, numbered where stems repeat."""
    names, seen = [], {}
    for path in paths:
        stem = osp.splitext(osp.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f'{stem}.png' if seen[stem] == 1 else f'{stem}_{seen[stem]}.png')
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CLS attention maps with and without prompts')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+', metavar='IMAGE')
    parser.add_argument('--out', required=True, help='output folder (one PNG per image)')
    parser.add_argument('--blocks', type=int, nargs='+', default=[-1],
                        help='blocks to show (negative counts from the end)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    written = []
    try:
        for kind, path in [('config', args.config), ('checkpoint', args.checkpoint)] + \
                [('image', image) for image in args.images]:
            if not osp.isfile(path):
                raise AnalysisError(f'{kind} file {path!r} does not exist')
        model, cfg = load_model(args.config, args.checkpoint, args.cfg_options, args.device)
        backbone = prompted_vit(model)
        blocks = resolve_blocks(args.blocks, backbone.num_layers)
        os.makedirs(args.out, exist_ok=True)
        for (inputs, picture), name in zip(preprocess_images(cfg, model, args.images),
                                           output_names(args.images)):
            maps = attention_maps(model, inputs, blocks)
            path = osp.join(args.out, name)
            draw(picture, maps, blocks, path)
            written.append(path)
            print(f'wrote {path}')
    except (AnalysisError, InputError) as err:
        sys.exit(f'visualize_attention: {err}')
    return written


if __name__ == '__main__':
    main()
