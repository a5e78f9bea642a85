"""The analyses a run's config asks for: probe sets drawn from the run's data, and the
registered probe callbacks (`ice_tf.analysis.probes.PROBES`) made on them.

Example:
    callbacks = analysis_callbacks(config.replace(analyses=("shift",)), directory="runs/x")
    model.fit(train, epochs=6, callbacks=callbacks)
"""

from __future__ import annotations

import numpy as np

from ice_tf.analysis import probes as probes_lib
from ice_tf.experiment import run_data, run_folder


def build_probes(config, size=None):
    """The probe sets `config.analyses` needs, `size` images each (default
    `config.analysis_probe_size`).

    Returns a dict with the sets the analyses' probes need (`Probe.needs`):
      "train": (images, labels) of the in-distribution training split, without
        augmentation (what the gradient meter and shift tracker see);
      "outliers": training outlier images (`config.outlier_dataset`, split train);
      "eval": in-distribution images of `config.eval_split`;
      "ood": {label: images} of every OOD set of `config.ood_datasets`.

    Example:
      probes = build_probes(config, size=256)
    """
    size = int(size or config.analysis_probe_size)
    needed = {need for name in config.analyses for need in probes_lib.probe(name).needs}
    probes = {}
    if "train" in needed:
        probes["train"] = run_data.load_images(config, config.in_dataset, "train", size)
    if "outliers" in needed:
        name, path = run_data.substitute(config, config.outlier_dataset, config.outlier_path)
        substituted = config.dry_run or name != config.outlier_dataset
        exclude = None if substituted else config.outlier_exclude_path
        probes["outliers"] = run_data.load_images(config, name, "train", size, path, exclude)[0]
    if needed & {"eval", "ood"}:
        # The evaluation sets themselves, `size` images of each.
        in_dataset, ood_datasets = run_data.make_eval_data(
            config.replace(eval_limit=size, eval_batch_size=size)
        )
        probes["eval"] = _images_of(in_dataset)
        probes["ood"] = {label: _images_of(dataset) for label, dataset in ood_datasets.items()}
    return probes


def _images_of(dataset):
    return np.concatenate([images.numpy() for images, _ in dataset])


def analysis_callbacks(config, directory=None, probe_size=None, start_epoch=0, resumed=False):
    """The callbacks `config.analyses` asks for, on probe sets built once.

    Args:
      config: an `ExperimentConfig`.
      directory: the run folder; records go to <directory>/analysis/<name>.jsonl
        (None: kept in memory only, as in a dry run).
      probe_size: images per probe set; default `config.analysis_probe_size`.
      start_epoch, resumed: the first epoch of a resumed run (see `ProbeCallback`).

    Example:
      callbacks = analysis_callbacks(config.replace(analyses=("shift",)), directory="runs/x")
    """
    if not config.analyses:
        return []
    probes = build_probes(config, probe_size)

    def path(name):
        return run_folder.analysis_path(directory, name) if directory else None

    return [probes_lib.probe(name).make(probes, path(name), start_epoch=start_epoch,
                                        resumed=resumed)
            for name in config.analyses]


__all__ = ["build_probes", "analysis_callbacks"]
