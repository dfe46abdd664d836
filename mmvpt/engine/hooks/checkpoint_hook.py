"""MMEngine's CheckpointHook, safe to kill at any moment and exact to resume."""
import glob
import logging
import os
import os.path as osp
import random
from functools import partial

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook as MMEngineCheckpointHook
from mmengine.logging import print_log

from mmvpt.registry import HOOKS
from mmvpt.utils.atomic_io import atomic_write


def get_rng_state():
    """This process's random-number state: python, numpy, torch CPU and every CUDA
    device, in plain types (weights-only loading reads them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(python=random.getstate(), numpy=(name, keys.tolist(), pos, has_gauss, cached),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(state):
    """Restores what :func:`get_rng_state` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        if len(state['cuda']) != torch.cuda.device_count():
            print_log(f'the checkpoint has the random state of {len(state["cuda"])} CUDA devices, '
                      f'this process sees {torch.cuda.device_count()}: CUDA random numbers after '
                      'resuming differ from an uninterrupted run', logger='current',
                      level=logging.WARNING)
        else:
            torch.cuda.set_rng_state_all(state['cuda'])


@HOOKS.register_module()
class CheckpointHook(MMEngineCheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` (same arguments), with three guarantees.

    - **Atomic.** Checkpoints and ``last_checkpoint`` are written to a temporary file and
      renamed (mmvpt makes MMEngine's local file backend do this for every checkpoint), and
      an old checkpoint beyond ``max_keep_ckpts`` is deleted only after the new one is in
      place: a process killed while saving leaves the previous checkpoint and
      ``last_checkpoint`` intact and resumable.
    - **Every rank's random state** (python, numpy, torch CPU and CUDA) is in every
      checkpoint, under ``rng_state`` (one entry per rank), taken where the checkpoint is
      saved. ``--resume`` gives each rank its own back just before training goes on (the
      first epoch, or iteration, after the checkpoint), so prompt dropout and in-process
      augmentation draw the same numbers as in an uninterrupted run. Validation leaves the
      training's random stream where it found it, since a resumed run does not repeat it.
      Ranks the checkpoint has no state for keep the freshly seeded one (a warning says so).
    - **The same data order.** A resumed run whose seed was not set in the config still
      shuffles as the interrupted one did (MMEngine reseeds only after building the
      sampler).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng_states = None  # every rank's, for the checkpoint being written
        self._resumed_rng_state = None  # this rank's, waiting for training to go on
        self._state_before_val = None

    # -- saving ---------------------------------------------------------------------------
    def before_train(self, runner):
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            # What a save killed half-way left behind (the checkpoints themselves are whole).
            for path in glob.glob(osp.join(glob.escape(self.out_dir), '.*.partial')):
                os.remove(path)

    def _training_rng_state(self):
        # A best checkpoint is saved inside validation: store the state training resumes from.
        return self._state_before_val if self._state_before_val is not None else get_rng_state()

    def before_save_checkpoint(self, runner, checkpoint):
        if self._rng_states is not None:
            checkpoint['rng_state'] = self._rng_states

    def _save_checkpoint_with_step(self, runner, step, meta):
        # Every rank comes here (the file itself is written by rank 0 only): gather the states.
        self._rng_states = all_gather_object(self._training_rng_state())
        try:
            if not isinstance(self.file_backend, LocalBackend):
                return super()._save_checkpoint_with_step(runner, step, meta)
            self._save_then_prune(runner, step, meta)
        finally:
            self._rng_states = None

    def _save_then_prune(self, runner, step, meta):
        """MMEngine's bookkeeping, but the outdated checkpoint is deleted after the new one
        and ``last_checkpoint`` are written, not before."""
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        if outdated is not None and outdated != step:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)

    # -- validation does not move the training's random stream ---------------------------
    def before_val(self, runner):
        self._state_before_val = get_rng_state()

    def after_val(self, runner):
        if self._state_before_val is not None:
            set_rng_state(self._state_before_val)
            self._state_before_val = None

    # -- resuming -------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint):
        if not getattr(runner, '_resume', False):
            return  # load_from: weights only, a new run
        states = checkpoint.get('rng_state') or []
        rank = get_rank()
        if rank < len(states):
            self._resumed_rng_state = states[rank]
        else:
            print_log(f'the checkpoint has no random state for rank {rank} (it has '
                      f'{len(states)}): this rank resumes with a fresh seed, so its random '
                      'numbers differ from an uninterrupted run', logger='current',
                      level=logging.WARNING)
        self._keep_data_order(runner, checkpoint.get('meta', {}).get('seed'))

    @staticmethod
    def _keep_data_order(runner, seed):
        """Gives the already built train sampler and worker seeding the checkpoint's seed."""
        if seed is None:
            return
        loader = runner.train_dataloader
        sampler = getattr(loader, 'sampler', None)
        if getattr(sampler, 'seed', seed) != seed:
            sampler.seed = seed
        init_fn = loader.worker_init_fn
        if isinstance(init_fn, partial) and init_fn.keywords.get('seed', seed) != seed:
            loader.worker_init_fn = partial(init_fn.func, *init_fn.args,
                                            **dict(init_fn.keywords, seed=seed))
        if loader.num_workers > 0 and loader.persistent_workers:
            print_log('persistent data workers restart with their initial seeds after resuming: '
                      'random augmentations done in workers differ from an uninterrupted run',
                      logger='current', level=logging.WARNING)

    def _restore_resumed_rng_state(self):
        if self._resumed_rng_state is not None:
            set_rng_state(self._resumed_rng_state)
            self._resumed_rng_state = None

    def before_train_epoch(self, runner):
        # Epoch-based: before the epoch's data iterator is made, which draws from the stream.
        if self.by_epoch:
            self._restore_resumed_rng_state()

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        # Iteration-based: after the loop skipped the batches trained before the checkpoint.
        # Exact when data loads in workers; in-process random augmentation of the batch
        # fetched just before this point is not restored.
        self._restore_resumed_rng_state()
