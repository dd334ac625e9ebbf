"""Each epoch's numbers as TensorBoard scalars, in the run folder (`tensorboard --logdir RUN`).

The event files sit next to metrics.jsonl and hold the same numbers, step = epoch:
    train/loss, train/d1/total, train/d2/<part>, ...   mean losses of the epoch (as metrics.jsonl)
    train/images_per_s
    lr                                                 learning rate at the end of the epoch
    val/d1_AP, val/d2_AP50, ...                        COCO metrics of route easy (d1) and route hard
                                                       (d2), on the epochs that were evaluated

TensorBoard is an optional extra (`pip install 'dynamicdet[tensorboard]'`): without the
`tensorboard` package nothing is written and nothing is said, as the plot without
matplotlib. The writer opens at the first epoch it logs, so a run that stops before one
leaves no event file. It starts by purging the steps from the run's first new epoch on
(SummaryWriter's `purge_step`): TensorBoard then drops what an earlier, killed or replaced
(--force) run wrote for those epochs, and a resumed run shows each epoch once.

Event files are TensorBoard's own append-only record format (each record checksummed, so a
reader skips a torn tail), not written through atomic_path; they are flushed after every
epoch. A failure to write warns once and turns the log off; it never stops training.
"""

from __future__ import annotations

from pathlib import Path

from dynamicdet_cli.core.errors import user_message, warn
from dynamicdet_cli.train.run_plot import finite_number

NOT_SCALARS = ("epoch", "step", "steps", "seconds", "val")  # the step itself, or logged apart


def epoch_scalars(record: dict) -> dict[str, float]:
    """TensorBoard tag -> value for one metrics.jsonl line; numbers that are missing, not
    finite, or COCOeval's -1 ("no objects of this size") are left out."""
    scalars = {}
    for key, value in record.items():
        if key not in NOT_SCALARS and finite_number(value):
            scalars[key if key == "lr" else f"train/{key}"] = float(value)
    val = record.get("val")
    for detector, metrics in (val.items() if isinstance(val, dict) else ()):
        for name, value in (metrics.items() if isinstance(metrics, dict) else ()):
            if finite_number(value) and value >= 0:
                scalars[f"val/{detector}_{name}"] = float(value)
    return scalars


class TensorBoardLog:
    """Scalars of each epoch into TensorBoard event files in `run` (call `log` on rank 0 only).

    `first_epoch` is the number of epochs already done when this process started (0 for a
    new run, the resume state's epoch for a resumed one). Use as a context manager, or call
    `close`.
    """

    def __init__(self, run: str | Path, first_epoch: int):
        self.run = Path(run)
        self.first_epoch = first_epoch
        self.writer = None
        self.off = False

    def log(self, record: dict) -> None:
        if self.off:
            return
        try:
            if self.writer is None:
                writer_class = _summary_writer()
                if writer_class is None:
                    self.off = True
                    return
                self.writer = writer_class(log_dir=str(self.run), purge_step=self.first_epoch + 1)
            for tag, value in epoch_scalars(record).items():
                self.writer.add_scalar(tag, value, record["epoch"])
            self.writer.flush()  # a killed run keeps every epoch it finished
        except Exception as err:  # TensorBoard is never worth a training run; Ctrl-C still passes
            self.off = True
            warn(f"{self.run}: TensorBoard logging stopped ({user_message(err)}); "
                 "training goes on, metrics.jsonl and results.png hold every number")
            self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # already warned, or the run is ending anyway: the events written stay
                pass

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _summary_writer():
    """torch's SummaryWriter class, or None when the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter

