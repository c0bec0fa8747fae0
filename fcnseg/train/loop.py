"""The training loop, shaped like torchvision's references/segmentation/train.py: ``train`` builds a run's parts
once (``setup``), resumes them (``resume_from``), then repeats ``train_one_epoch``, ``evaluate`` and
``save_checkpoint`` and writes the final model files (``finish``)."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data import pad_collate
from ..evaluate import evaluate as evaluate_model
from ..evaluate import format_table, write_report
from ..io.atomic import WriteError, stale_temp_files
from ..io.checkpoint import load_checkpoint
from ..io.checkpoint import save_checkpoint as write_checkpoint
from ..io.modelfile import save_model
from ..losses import build_loss, segmentation_loss
from ..preprocessing import Preprocessing
from ..runtime.amp import DTYPE_NAMES, dtype_from_name, faster_autocast
from ..runtime.device import resolve_amp
from ..runtime.distributed import finish_distributed, setup_distributed
from .budget import PROBE_STEPS, steps_within, validation_estimate
from .callbacks import Callback
from .config import TrainConfig
from .data import Augmented, build_data, class_weights, epoch_batches, train_augmentation
from .ema import make_ema
from .logs import TrainLogger, brief_scores, eta, progress_bar, startup_line
from .model import LRFactor, build, check_batchnorm, make_optimizer, param_groups, train_mode
from .state import TrainState


@dataclass
class Clock:
    """Where a run with a time budget spent its time in this process (``time.perf_counter`` seconds): ``start``
    when ``train`` was called, ``loop_start`` when the timed steps began (after step ``loop_step``; ``warm``:
    this process's first step, which is not timed, is done), the last validation's seconds (``val_s``; None:
    none yet) and all of them (``val_total``); ``cap``: the steps the config allows; ``steps_per_epoch``;
    ``planned``: the steps were planned (``plan_budget``). A run resumed after its plan has no clock: its
    checkpoint's schedule keeps the plan."""

    start: float
    cap: int
    steps_per_epoch: int
    loop_start: float = 0.0
    loop_step: int = 0
    val_s: float | None = None
    val_total: float = 0.0
    warm: bool = False
    planned: bool = False


@dataclass
class Run:
    """The parts of one run, built once by ``setup``; ``train_one_epoch``, ``evaluate`` and ``save_checkpoint``
    work with them. ``net`` is the model or, under ``torchrun``, its DDP wrapper; ``logger`` exists on rank 0
    only; ``saved_step`` is the step of the last checkpoint written (None: none yet); ``clock`` exists where
    the config sets ``time_budget_min``; ``ema`` (an ``AveragedModel``, see ``fcnseg.train.ema``) where it sets
    ``ema_decay``: then its weights are the ones validated and saved."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    train_ds: object
    val_ds: object
    augmented: Augmented
    model: torch.nn.Module
    loss_fn: object
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    loader_generator: torch.Generator
    callbacks: tuple[Callback, ...] = ()
    net: torch.nn.Module | None = None
    logger: TrainLogger | None = None
    saved_step: int | None = None
    amp_chosen: bool = False
    clock: Clock | None = None
    ema: torch.nn.Module | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shipped(self) -> torch.nn.Module:
        """The model that is validated and saved as ``best``/``model``: the EMA's copy where there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This process's batches of ``(index, seed)`` for ``epoch`` (see ``epoch_batches``)."""
        cfg = self.cfg
        return epoch_batches(len(self.train_ds), cfg.batch_size, epoch, cfg.seed, self.rank, self.world,
                             drop_last=cfg.batch_size > 1)


def setup(cfg: TrainConfig, callbacks: tuple[Callback, ...] = ()) -> Run:
    """Joins the process group (under torchrun), seeds, reads the data and builds the model, loss, optimiser
    and schedule; rank 0 prints the data summaries and the start-up line. Raises as ``train`` does."""
    started = time.perf_counter()
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    train_ds, val_ds = build_data(cfg, rank == 0)
    aug = train_augmentation(cfg, train_ds)
    model = build(cfg, train_ds.class_names, train_ds.palette).to(device)
    check_batchnorm(model, cfg)
    loss_fn = build_loss(cfg.loss, cfg.task, weight=class_weights(cfg, train_ds, device),
                         reduction=cfg.loss_reduction)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = make_optimizer(param_groups(model, cfg), cfg)
    steps_per_epoch = len(epoch_batches(len(train_ds), cfg.batch_size, 0, cfg.seed, rank, world, cfg.batch_size > 1))
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    if rank == 0:
        print(startup_line(cfg, train_ds, val_ds, steps_per_epoch, total_steps), flush=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(cfg, total_steps))
    # A private generator for the loaders: creating one must not draw from the global RNG (the loss
    # sampling's), or a run resumed mid-epoch would draw differently from an uninterrupted one.
    return Run(cfg, rank, world, device, train_ds, val_ds, Augmented(train_ds, aug), model, loss_fn, amp_dtype,
               scaler, optimizer, scheduler, total_steps, torch.Generator().manual_seed(cfg.seed), callbacks,
               clock=Clock(started, total_steps, steps_per_epoch) if cfg.time_budget_min else None,
               ema=make_ema(model, cfg.ema_decay) if cfg.ema_decay else None)


def resume_from(run: Run, state: TrainState, resume: str) -> None:
    """Loads a checkpoint into the run's model, optimiser, schedule and scaler, and into ``state`` (counters and
    random-number state). ``resume``: a checkpoint file, or "auto" for ``OUT/last.pt`` if it exists (else the
    run starts fresh).

    Raises:
        FileNotFoundError: the checkpoint file does not exist.
        ValueError: not a readable fcnseg checkpoint, or one of another architecture or backbone, or weights
            that do not fit the model; the message names the file.
    """
    cfg, out = run.cfg, run.out
    ckpt = Path(resume) if resume != "auto" else out / "last.pt"
    if resume == "auto" and not ckpt.exists():
        if run.main:
            print(f"no checkpoint at {out / 'last.pt'}: starting fresh")
        return
    saved = load_checkpoint(ckpt)
    if saved["config"]["arch"] != cfg.arch or saved["config"]["backbone"] != cfg.backbone:
        raise ValueError(f"{ckpt}: checkpoint is a {saved['config']['arch']} {saved['config']['backbone']}, "
                         f"the config asks for a {cfg.arch} {cfg.backbone}")
    try:
        run.model.load_state_dict(saved["model"])
    except RuntimeError as e:
        raise ValueError(f"{ckpt}: checkpoint does not fit the model ({str(e).splitlines()[0]})") from None
    pre = Preprocessing.from_dict(saved["preprocessing"])
    run.model.normalize.set(pre)
    if run.ema is not None:
        run.ema.module.normalize.set(pre)
        if "ema" in saved:  # else the average starts from the resumed weights (its first update copies them)
            run.ema.load_state_dict(saved["ema"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    # With a budget, the plan the interrupted run made; else the config's schedule (it may have grown).
    saved_total = run.scheduler.lr_lambdas[0].total_steps
    _set_total_steps(run, min(run.total_steps, saved_total) if cfg.time_budget_min else run.total_steps)
    run.scaler.load_state_dict(saved["scaler"])
    if cfg.amp == "auto" and "amp" in saved:  # the resumed run computes as the interrupted one did
        run.amp_dtype, run.amp_chosen = dtype_from_name(saved["amp"]), True
    state.load_state_dict(saved)
    if run.main:
        print(f"resumed from {ckpt}: epoch {state.epoch}, step {state.step}")


def choose_amp(run: Run) -> None:
    """``amp: auto`` on the CPU: times one training step of a copy of the model on a batch of the training shape
    (``cfg.crop``, else ``cfg.resize``, else 320x320) in fp32 and in bf16 and keeps the faster
    (``fcnseg.runtime.amp.faster_autocast``); under torchrun rank 0's choice is every rank's. Rank 0 prints it.
    A resumed run keeps its checkpoint's choice. The global random-number state is left as it was."""
    cfg = run.cfg
    if cfg.amp != "auto" or run.device.type != "cpu" or run.amp_chosen:
        return
    with torch.random.fork_rng(devices=[]):
        choice = faster_autocast(_probe_step(run), run.device, repeats=2)
    name = [choice.name]
    if run.world > 1:  # timings differ between processes; they must compute alike
        torch.distributed.broadcast_object_list(name, src=0)
    run.amp_dtype, run.amp_chosen = dtype_from_name(name[0]), True
    if run.main:
        print(f"amp auto: {choice.describe()}", flush=True)


def _probe_step(run: Run):
    """A function of an autocast dtype that runs forward and backward on a copy of the model (the run's weights,
    BatchNorm statistics and gradients untouched), with a random batch of the training shape."""
    cfg = run.cfg
    model = copy.deepcopy(run.model)
    train_mode(model, cfg)
    h, w = cfg.crop or cfg.resize or (320, 320)
    x = torch.rand(cfg.batch_size, cfg.in_channels, h, w, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype, enabled=dtype is not None):
            scores = model(x)
        scores.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return step


def plan_budget(run: Run, state: TrainState) -> None:
    """``time_budget_min``: sets the run's total steps, and its schedule's, to what fits in the budget counted
    from ``train``'s start, at this process's seconds per step so far and the last validation's seconds (an
    estimate before the first: ``fcnseg.train.budget.validation_estimate``); never more than the config's
    ``epochs`` and ``max_steps`` allow. Rank 0's plan is every rank's. Rank 0 prints it and records it in
    ``OUT/config.yaml`` as ``max_steps``, with no budget, so that the run repeats from that file."""
    cfg, clock, now = run.cfg, run.clock, time.perf_counter()
    step_s = (now - clock.loop_start - clock.val_total) / max(state.step - clock.loop_step, 1)
    val_s, every = 0.0, None
    if run.val_ds is not None:
        every = clock.steps_per_epoch * cfg.val_every
        val_s = clock.val_s if clock.val_s is not None else validation_estimate(
            step_s, _pixels(run.val_ds, cfg.resize), cfg.batch_size * _pixels(run.train_ds, cfg.crop or cfg.resize, 1))
    left_s = cfg.time_budget_min * 60 - (now - clock.start)
    total = [steps_within(left_s, step_s, val_s, state.step, clock.cap, every)]
    if run.world > 1:  # timings differ between processes; they must stop at the same step
        torch.distributed.broadcast_object_list(total, src=0)
    _set_total_steps(run, total[0])
    clock.planned = True
    if run.main:
        print(f"time budget {cfg.time_budget_min:g} min: {run.total_steps} steps in all ({left_s / 60:.1f} min left "
              f"at step {state.step}, {step_s:.2f} s per step, {val_s:.1f} s per validation); config.yaml records "
              f"max_steps {run.total_steps}", flush=True)
        _record_plan(run)


def _set_total_steps(run: Run, total: int) -> None:
    """The run's step count, and its schedule's (one ``LRFactor`` per parameter group), become ``total``."""
    run.total_steps = total
    for factor in run.scheduler.lr_lambdas:
        factor.total_steps = total


def _record_plan(run: Run) -> None:
    """Rank 0: ``OUT/config.yaml`` with the planned steps as ``max_steps`` and no budget, which repeats the run."""
    run.logger.write_config(replace(run.cfg, max_steps=run.total_steps, time_budget_min=None))


def _pixels(ds, size: list | None, images: int | None = None) -> int:
    """Pixels in ``images`` images of ``ds`` (default: all): each of ``size`` ([H, W]) where given, else of
    the files' sizes (their mean for a count other than all)."""
    n = len(ds) if images is None else images
    if size:
        return n * size[0] * size[1]
    # A dataset not checked has no sizes at hand: 512x512 is an estimate's estimate, corrected by the first
    # validation's measured time.
    sizes = ds.stats.sizes if getattr(ds, "stats", None) is not None else [(512, 512)]
    return round(n * sum(w * h for w, h in sizes) / len(sizes))


def _distributed(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """The model wrapped for DDP when there are several processes (BatchNorm synchronised on CUDA)."""
    if world == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _train_step(run: Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch (images float32 [N, C, H, W], labels int64 [N, H, W] or multilabel
    [N, K, H, W]); returns the loss (a 0-d tensor) and counts the step in ``state``.

    Raises:
        FloatingPointError: the loss is not finite (the step is not taken).
    """
    cfg, device = run.cfg, run.device
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, run.amp_dtype, enabled=run.amp_dtype is not None):
        scores = run.net(images)
    loss = segmentation_loss(scores, labels, sample=cfg.loss_sample, stride=cfg.loss_sample_stride, loss=run.loss_fn)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {state.step} (epoch {state.epoch + 1}); "
                                 f"lower lr (now {run.scheduler.get_last_lr()[0]:.3g}) or check the data")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    state.step += 1
    return loss


def _log_step(run: Run, state: TrainState, loss: torch.Tensor, rate: float, step_start: float, bar) -> dict:
    """Rank 0 logs the step (CSV, TensorBoard, progress bar); returns the callbacks' ``logs`` (empty on other
    ranks when there are no callbacks: reading the loss would wait for the device)."""
    if not run.main and not run.callbacks:
        return {}
    logs = {"loss": loss.item(), "lr": run.scheduler.get_last_lr()[0], "images_per_s": rate}
    if run.main:
        left = eta(state.train_seconds + time.perf_counter() - step_start, state.step, run.total_steps - state.step)
        run.logger.step(state.step, state.epoch + 1, logs["loss"], logs["lr"], rate, left)
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4g}", img_s=f"{rate:.1f}", run_eta=left)
    return logs


def train_one_epoch(run: Run, state: TrainState) -> None:
    """Trains from ``state``'s batch to the end of its epoch, or until ``total_steps``, with a checkpoint every
    ``ckpt_every`` steps within the epoch; leaves ``state`` at the next epoch's first batch.

    Raises:
        FloatingPointError: a non-finite loss.
        WriteError: a checkpoint could not be written.
    """
    cfg = run.cfg
    batches = run.batches(state.epoch)
    loader = torch.utils.data.DataLoader(run.augmented, batch_sampler=batches[state.batch:], num_workers=cfg.workers,
                                         collate_fn=pad_collate, pin_memory=run.device.type == "cuda",
                                         generator=run.loader_generator)
    train_mode(run.net, cfg)
    bar = progress_bar(run.main, len(batches), state.batch, f"epoch {state.epoch + 1}/{cfg.epochs}")
    tick, seen = time.perf_counter(), 0
    step_start = tick  # the data loading of a step counts towards it
    for b, (images, labels) in enumerate(loader, start=state.batch):
        loss = _train_step(run, state, images, labels)
        seen += images.shape[0] * run.world
        logs = _log_step(run, state, loss, seen / (time.perf_counter() - tick), step_start, bar)
        state.train_seconds += time.perf_counter() - step_start
        state.batch = b + 1
        for callback in run.callbacks:
            callback.on_step_end(state, logs)
        if cfg.ckpt_every and state.step % cfg.ckpt_every == 0 and b + 1 < len(batches):
            save_checkpoint(run, state)
        if run.clock is not None:
            _budget_step(run, state)
        if state.step >= run.total_steps:
            break
        step_start = time.perf_counter()
    bar.close()
    state.epoch, state.batch = state.epoch + 1, 0


def evaluate(run: Run, state: TrainState) -> dict:
    """Scores the model on the validation split (all processes; the confusion matrix is summed over them).
    Rank 0 logs the scores and writes ``best.safetensors`` when the score (mean IU; foreground IU for a binary
    task) beats ``state.best`` or there is none yet. Returns ``fcnseg.evaluate.evaluate``'s dict.

    Raises:
        WriteError: ``best.safetensors`` could not be written.
    """
    cfg = run.cfg
    # Under torchrun the EMA is the same on every rank (it follows DDP's synchronised weights), so its copy is
    # scored unwrapped; the confusion matrix is still summed over the ranks.
    net = run.net if run.ema is None else run.ema.module
    result = evaluate_model(net, run.val_ds, run.device, amp_dtype=run.amp_dtype, channels_last=cfg.channels_last,
                            boundary_width=cfg.boundary_width or None)
    if run.main:
        run.logger.val(state.step, state.epoch, result, state.train_seconds)
        score = result.get("foreground_iu" if cfg.task == "binary" else "mean_iu")
        score = -1.0 if score is None else score  # None: no labelled pixel in the validation masks
        if score > state.best or not (run.out / "best.safetensors").exists():
            state.best = max(state.best, score)
            save_model(run.shipped, run.out / "best.safetensors", epoch=state.epoch, step=state.step,
                       val=brief_scores(result), dataset=cfg.dataset, split=cfg.val_split,
                       dataset_options=cfg.dataset_options, **_weights_info(cfg))
    return result


def _budget_step(run: Run, state: TrainState) -> None:
    """After each step of a run with a time budget: the rate is timed from the end of this process's first
    step (which warms up kernels and allocator, and would overstate the rest) and the steps are planned at
    ``PROBE_STEPS``."""
    clock = run.clock
    if not clock.warm:
        clock.loop_start, clock.loop_step, clock.warm = time.perf_counter(), state.step, True
    elif not clock.planned and state.step >= PROBE_STEPS:
        plan_budget(run, state)


def _drop_clock_after_plan(run: Run, state: TrainState) -> None:
    """A run with a time budget resumed after its plan was made keeps the checkpoint's plan (its schedule holds
    it) and plans no more; its ``config.yaml`` records that plan."""
    if run.clock is not None and state.step >= PROBE_STEPS:
        run.clock = None
        if run.main:
            _record_plan(run)


def _timed_evaluate(run: Run, state: TrainState, replan: bool) -> dict:
    """``evaluate``; with a time budget, its seconds go to the run's clock and, if ``replan`` and this process
    planned the run, the steps left are planned again with them."""
    tick = time.perf_counter()
    result = evaluate(run, state)
    clock = run.clock
    if clock is not None:
        clock.val_s = time.perf_counter() - tick
        clock.val_total += clock.val_s
        if replan and clock.planned:
            plan_budget(run, state)
    return result


def save_checkpoint(run: Run, state: TrainState) -> None:
    """Rank 0 writes ``OUT/last.pt`` atomically (model, optimiser, schedule, scaler, ``state.state_dict()``,
    config, preprocessing), after flushing the logs so that their rows up to this step survive a kill as the
    checkpoint does; then calls the callbacks' ``on_checkpoint``. Other ranks do nothing.

    Raises:
        WriteError: the file could not be written (e.g. a full disk); the message adds the step the run
            stopped at and which checkpoint is kept. The previous ``last.pt`` is unchanged.
    """
    if not run.main:
        return
    run.logger.flush()
    path = run.out / "last.pt"
    try:
        write_checkpoint({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                          "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                          **state.state_dict(), "config": asdict(run.cfg), "amp": DTYPE_NAMES[run.amp_dtype],
                          "preprocessing": run.model.preprocessing.to_dict(),
                          **({"ema": run.ema.state_dict()} if run.ema is not None else {})}, path, spec=run.model.spec)
    except WriteError as e:
        # A run that cannot checkpoint stops: going on would risk losing everything after the last good one.
        kept = f"the checkpoint of step {run.saved_step} is kept" if run.saved_step else "no checkpoint was written"
        raise WriteError(f"{e}; training stopped at step {state.step} ({kept})") from e
    run.saved_step = state.step
    for callback in run.callbacks:
        callback.on_checkpoint(state, path)


def _weights_info(cfg: TrainConfig) -> dict:
    """What a saved model file says of its weights beyond the step: the EMA's decay where they are an EMA."""
    return {"weights": "ema", "ema_decay": cfg.ema_decay} if cfg.ema_decay else {}


def finish(run: Run, state: TrainState, result: dict) -> None:
    """Rank 0 writes ``model.safetensors`` (the last weights), ``best.safetensors`` when there was no validation
    to pick one, the last validation report, and closes the logs; then every process leaves the group.

    Raises:
        WriteError: a model file or the report could not be written.
    """
    if run.main:
        cfg, out = run.cfg, run.out
        info = dict(epoch=state.epoch, step=state.step, dataset=cfg.dataset, dataset_options=cfg.dataset_options,
                    **_weights_info(cfg))
        save_model(run.shipped, out / "model.safetensors", val=brief_scores(result) if result else None, **info)
        if run.val_ds is None:  # no validation to pick a best model by: the best is the last
            save_model(run.shipped, out / "best.safetensors", val=None, best="last (no validation)", **info)
        if result:
            write_report(result, out / "val")
            print(format_table(result))
        run.logger.close()
        print(f"saved to {out}: model.safetensors (last), best.safetensors "
              f"({'best val mean IU' if run.val_ds is not None else 'no validation: the last'}), last.pt", flush=True)
    finish_distributed()


def train(cfg: TrainConfig, resume: str | None = None, callbacks: Iterable[Callback] = ()) -> dict:
    """Runs training as ``cfg`` says; returns the last validation scores (an empty dict without validation).

    Writes to ``cfg.out`` (rank 0 only): ``last.pt`` (after each epoch and every ``ckpt_every`` steps),
    ``best.safetensors``, ``model.safetensors``, ``config.yaml``, ``train_log.csv``, ``val_log.csv``, ``val/``
    and ``tb/``. ``resume``: None (fresh), "auto" (``OUT/last.pt`` if it exists) or a checkpoint file; a
    resumed run replays the same batches, augmentations and loss samples as an uninterrupted one.
    ``callbacks``: ``Callback`` objects called after each step, epoch and checkpoint (see ``Callback``).

    Raises:
        FileNotFoundError: the data folder, ``init_from`` or the ``resume`` checkpoint does not exist.
        fcnseg.data.DatasetError: a bad image or mask (without ``skip_bad``), or data that cannot train.
        ValueError: a config that does not fit the data (classes, task, channels, class weights, BatchNorm
            with batch 1), or a checkpoint of another model; each message names the file or the key.
        FloatingPointError: a non-finite loss.
        WriteError: a checkpoint or model file could not be written; the previous one is unchanged.
        RuntimeError: under torchrun, a lost peer or a process group that could not be formed.
    """
    run = setup(cfg, tuple(callbacks))
    state = TrainState()
    if resume:
        resume_from(run, state, resume)
    run.saved_step = state.step or None
    choose_amp(run)
    run.net = _distributed(run.model, run.device, run.world)
    if run.main:
        for tmp in stale_temp_files(run.out):  # left by a run killed inside a write; the real files are whole
            tmp.unlink(missing_ok=True)
        run.logger = TrainLogger(run.out, cfg, state.step)
    result: dict = {}
    _drop_clock_after_plan(run, state)
    while state.epoch < cfg.epochs and state.step < run.total_steps:
        train_one_epoch(run, state)
        last = state.epoch >= cfg.epochs or state.step >= run.total_steps
        metrics = {}
        if run.val_ds is not None and (state.epoch % cfg.val_every == 0 or last):
            metrics = result = _timed_evaluate(run, state, replan=not last)
        for callback in run.callbacks:
            callback.on_epoch_end(state, metrics)
        save_checkpoint(run, state)
    finish(run, state, result)
    return result
