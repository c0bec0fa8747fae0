"""Training: whole-image FCN training with a per-pixel multinomial logistic loss (ignore label 255).

Two recipes, chosen with ``mode``:

- ``heavy``: the paper's. Batch 1, whole images, loss summed over pixels (Caffe's ``normalize: false``),
  SGD with momentum 0.99, a fixed tiny learning rate (1e-10 / 1e-12 / 1e-14 for FCN-32s / 16s / 8s),
  weight decay 5e-4, biases at twice the learning rate without decay, final bilinear upsampling frozen.
- ``modern``: batches of random crops padded by the collate (image 0, labels 255), mean loss, poly learning
  rate with linear warm-up, SGD or AdamW, optional mixed precision and class weights.

Both can sample the loss (the paper's patchwise training): each stride-``loss_sample_stride`` cell of the
loss is kept with probability ``loss_sample``. Everything that is random draws from seeds derived from
``(seed, epoch, image)``, so a resumed run, or one with another number of data workers, replays the same
batches. Under ``torchrun`` the same command trains with DDP; only rank 0 writes.

The parts: ``config`` (``TrainConfig``, ``load_config``), ``data`` (datasets, batches, class weights), ``model``
(model, optimiser, schedule), ``state`` (``TrainState``: what a checkpoint saves and a resume restores), ``loop``
(``train``, ``train_one_epoch``, ``evaluate``, ``save_checkpoint``), ``logs`` and ``callbacks`` (``Callback``).
"""

from .callbacks import Callback
from .config import TrainConfig, load_config
from .loop import train
from .state import TrainState

__all__ = ["Callback", "TrainConfig", "TrainState", "load_config", "train"]
