"""What a run reports: the start-up line, progress, CSV logs, TensorBoard and the time left."""

from __future__ import annotations

import csv
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from ..io.atomic import atomic_write
from ..runtime.allocator import loaded_allocator
from .budget import PROBE_STEPS
from .config import TrainConfig


def startup_line(cfg: TrainConfig, train_ds, val_ds, steps_per_epoch: int, total_steps: int) -> str:
    """One line before step 1: the data, the classes, the schedule, where the run is written and the memory
    allocator (``fcnseg.runtime.allocator``: tcmalloc trains faster than the system's malloc)."""
    val = f", {len(val_ds)} val images ({cfg.val_split})" if val_ds is not None else ", no validation"
    cap = f", capped by max_steps {cfg.max_steps}" if cfg.max_steps and cfg.max_steps < \
        cfg.epochs * steps_per_epoch else ""
    steps = f"{total_steps} steps in all ({cfg.epochs} epochs{cap})"
    if cfg.time_budget_min:
        steps = (f"at most {total_steps} steps ({cfg.epochs} epochs{cap}), as many as fit in "
                 f"{cfg.time_budget_min:g} min (planned after step {PROBE_STEPS})")
    return (f"training {cfg.arch} {cfg.backbone} on {len(train_ds)} images ({cfg.train_split}){val}; "
            f"{train_ds.num_classes} classes; batch {cfg.batch_size}, {steps_per_epoch} steps per epoch, "
            f"{steps}; writing to {cfg.out}; memory allocator: {loaded_allocator()}")


def eta(seconds_done: float, steps_done: int, steps_left: int) -> str:
    """Time left at the rate so far, as "1h02m", "3m05s" or "12s" ("?" before the first step)."""
    if steps_done <= 0:
        return "?"
    left = round(seconds_done / steps_done * steps_left)
    h, m, s = left // 3600, left % 3600 // 60, left % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def brief_scores(result: dict) -> dict:
    """The scores stored in a model file's info (``val``): the summary numbers of an evaluation, no matrices."""
    return {k: result[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "mean_dice",
                                   "foreground_iu") if k in result}


def progress_bar(main: bool, total: int, initial: int, desc: str):
    """A tqdm bar for an epoch's steps, shown by the main process on a terminal only (logs have lines instead)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not main or not sys.stderr.isatty(), leave=False)


class TrainLogger:
    """CSV logs (``train_log.csv``, ``val_log.csv``), TensorBoard (``tb/``) and a line per ``log_every`` steps
    when there is no terminal for the progress bar."""

    def __init__(self, out: Path, cfg: TrainConfig, step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.cfg, self.t0 = out, cfg, time.perf_counter()
        self.write_config(cfg)
        # On resume, rows written after the checkpoint are dropped: the run replays those steps.
        self.train_csv = self._open("train_log.csv", ["step", "epoch", "loss", "lr", "images_per_s", "seconds"], step)
        self.val_csv = self._open("val_log.csv", ["step", "epoch", "pixel_acc", "mean_acc", "mean_iu", "fw_iu",
                                                  "images_per_s", "train_seconds", "boundary_mean_iu"], step)
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=step or None)
            except ImportError:
                warnings.warn("tensorboard is not installed: CSV logs only", stacklevel=2)
        self.tty = sys.stderr.isatty()

    def write_config(self, cfg: TrainConfig) -> None:
        """Writes ``OUT/config.yaml`` (atomically): the config that repeats the run.

        Raises:
            WriteError: the file could not be written.
        """
        import yaml

        text = yaml.safe_dump(asdict(cfg), sort_keys=False)
        atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    def _open(self, name: str, header: list[str], step: int):
        path = self.out / name
        rows = []
        if step and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            # A kill can cut the last row short (the writer's buffer ends mid-row): such a row has fewer fields,
            # and its first field may be a prefix of the real step ("12" of "1234"); drop it.
            rows = [r for r in rows if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as t:
                csv.writer(t).writerows([header, *rows])

        # The kept rows replace the file in one rename (a kill here keeps the old log, whose extra rows the next
        # resume drops again); then rows are appended, a step at a time, as the run goes.
        atomic_write(path, write)
        f = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        return f, csv.writer(f)

    def step(self, step: int, epoch: int, loss: float, lr: float, rate: float, left: str = "?") -> None:
        f, w = self.train_csv
        w.writerow([step, epoch, f"{loss:.6g}", f"{lr:.6g}", f"{rate:.3f}", f"{time.perf_counter() - self.t0:.1f}"])
        if step % self.cfg.log_every == 0:
            f.flush()
            if self.tb:
                self.tb.add_scalar("train/loss", loss, step)
                self.tb.add_scalar("train/lr", lr, step)
                self.tb.add_scalar("train/images_per_s", rate, step)
            if not self.tty:
                print(f"step {step} epoch {epoch} loss {loss:.4g} lr {lr:.3g} {rate:.1f} img/s, eta {left}",
                      flush=True)

    def val(self, step: int, epoch: int, r: dict, train_seconds: float) -> None:
        f, w = self.val_csv
        boundary = r.get("boundary", {}).get("mean_iu")
        keys = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
        w.writerow([step, epoch] + ["" if r[k] is None else f"{r[k]:.6f}" for k in keys]
                   + [f"{r['images_per_s']:.3f}", f"{train_seconds:.1f}",
                      "" if boundary is None else f"{boundary:.6f}"])
        f.flush()
        if self.tb:
            for k in keys:
                if r[k] is not None:
                    self.tb.add_scalar(f"val/{k}", r[k], step)

        def pct(k: str) -> str:  # None: no labelled pixel in the validation masks
            return "-" if r.get(k) is None else f"{100 * r[k]:.2f}"

        fg = "" if r.get("foreground_iu") is None else f"foreground IU {pct('foreground_iu')} "
        print(f"val epoch {epoch} step {step}: {fg}pixel acc {pct('pixel_acc')} mean acc {pct('mean_acc')} mean IU "
              f"{pct('mean_iu')} fw IU {pct('fw_iu')} ({r['images_per_s']:.1f} img/s)", flush=True)

    def flush(self) -> None:
        for f, _ in (self.train_csv, self.val_csv):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f, _ in (self.train_csv, self.val_csv):
            f.close()
        if self.tb:
            self.tb.close()

