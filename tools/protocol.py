"""Each paper's evaluation protocol, as its method declares it, for VTAB-1k and FGVC configs:
what the authors searched (VPT's lr x wd grid and prompt length, E²VPT's pruning candidates
with rewinding) on the train / val split, then seeds on the final split, each tested once; a
fixed recipe (CVPT, SSF, NOAH's) runs its seeds only.

    python tools/protocol.py CONFIG|FOLDER [...] [--stage STAGE] [--print-only]
        [--lrs LR ...] [--wds WD ...] [--num-tokens P ...] [--seeds SEED ...] [--lr LR] [--wd WD]
        [--token-fractions F ...] [--piece-fractions F ...]
        [--launcher local|dist|slurm] [--gpus N] [--partition P] [--job-name NAME]
        [--array [--array-limit K]] [--work-dir DIR] [--cfg-options k=v ...]

--print-only prints the plan: every stage, its runs, epochs and commands, and the total
cost. Every run is a job with its own result; one with a result is skipped, so the tool can be
started again after an interruption. The work dir's layout is in mmvpt/protocols/runner.py;
the protocols' form in mmvpt/models/utils/protocols.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import tools._bootstrap  # noqa: E402,F401  first: a python with torch, mmvpt's env if need be

from mmvpt.protocols import Launch, Overrides, plan_configs, run_protocol  # noqa: E402
from mmvpt.utils.protocol_results import ProtocolError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Each paper's protocol for VTAB-1k / FGVC configs: the authors' search on "
        'train -> val, then seeds on the final split, each tested once')
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='VTAB-1k (mmvpt.VTAB1k) or FGVC (mmvpt.FGVC) configs, or folders '
                        "of them (a method's folder: its whole table)")
    parser.add_argument('--work-dir', help='default: work_dirs/protocol/<method>/<config name>;'
                        ' with several configs, the folder holding <method>/<config name>')
    parser.add_argument('--stage', default='all',
                        help="one stage only (the stages before it must be finished): 'grid', "
                        "'final', E2VPT's 'before_pruning', 'importance', 'rewind' (default: all)")
    search = parser.add_argument_group('what the protocol searches (default: as declared)')
    search.add_argument('--lrs', type=float, nargs='+',
                        help='search learning rates, absolute (not scaled by batch)')
    search.add_argument('--wds', type=float, nargs='+', help='search weight decays')
    search.add_argument('--num-tokens', type=int, nargs='+',
                        help="search prompt lengths P (VPT's default: 1 5 10 50 100 200)")
    search.add_argument('--token-fractions', type=float, nargs='+',
                        help="E2VPT: fractions of the visual prompts to mask, in (0, 1) "
                        '(default: 0.1 ... 0.9)')
    search.add_argument('--piece-fractions', type=float, nargs='+',
                        help="E2VPT: fractions of each prompt's pieces to mask, in (0, 1) "
                        '(default: 0.1 ... 0.9)')
    search.add_argument('--seeds', type=int, nargs='+',
                        help='final-stage seeds; the search uses the first '
                        '(default: 42 44 82 100 800)')
    search.add_argument('--lr', type=float, help="final-stage lr instead of the search's")
    search.add_argument('--wd', type=float, help="final-stage weight decay instead of the search's")
    launch = parser.add_argument_group('where the runs run')
    launch.add_argument('--launcher', choices=['local', 'dist', 'slurm'], default='local',
                        help='local: python tools/train.py; dist: tools/dist_train.sh; '
                        'slurm: tools/slurm_train.sh')
    launch.add_argument('--gpus', type=int, default=1,
                        help='processes (GPUs) per run for dist / slurm')
    launch.add_argument('--partition', help='SLURM partition (--launcher slurm)')
    launch.add_argument('--job-name', help='SLURM job name (default: <method>-<task>)')
    launch.add_argument('--array', action='store_true',
                        help="SLURM: each stage's independent runs as one job array "
                        '(sbatch --wait)')
    launch.add_argument('--array-limit', type=int, help='at most this many array tasks at once')
    parser.add_argument('--print-only', action='store_true',
                        help='print the plan (stages, runs, epochs, commands, total), run nothing')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides passed to every run')
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error('--gpus must be at least 1')
    if args.launcher == 'local' and args.gpus != 1:
        parser.error('--launcher local runs one process; use --launcher dist or slurm for '
                     f'--gpus {args.gpus}')
    if args.launcher == 'slurm' and not args.partition:
        parser.error('--launcher slurm needs --partition')
    if args.array and args.launcher != 'slurm':
        parser.error('--array needs --launcher slurm')
    return args


def main(argv=None):
    args = parse_args(argv)
    overrides = Overrides(lrs=args.lrs, wds=args.wds, num_tokens=args.num_tokens,
                          seeds=args.seeds, lr=args.lr, wd=args.wd,
                          token_fractions=args.token_fractions,
                          piece_fractions=args.piece_fractions)
    launch = Launch(launcher=args.launcher, gpus=args.gpus, partition=args.partition,
                    job_name=args.job_name, array=args.array, array_limit=args.array_limit,
                    cfg_options=tuple(args.cfg_options), print_only=args.print_only)
    configs = plan_configs(args.configs)
    totals = [0, 0, 0]
    for config in configs:
        work_dir = args.work_dir
        if work_dir and len(configs) > 1:
            work_dir = osp.join(work_dir, osp.basename(osp.dirname(osp.abspath(config))),
                                osp.splitext(osp.basename(config))[0])
        _, counts = run_protocol(config, overrides, launch, args.stage, work_dir)
        for i in range(3):
            totals[i] += sum(count[i] for count in counts.values())
    if args.print_only and len(configs) > 1:
        print(f'# all {len(configs)} configs: {totals[0]:,} trainings, {totals[1]:,} scoring '
              f'passes, {totals[2]:,} tests')


if __name__ == '__main__':
    try:
        main()
    except ProtocolError as err:
        print(f'protocol.py: error: {err}', file=sys.stderr)
        sys.exit(1)
