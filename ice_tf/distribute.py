"""Distribution strategy selection and the one place where losses meet replicas.

Keras sums gradients over replicas, so a loss that is already a mean over the
per-replica batch must be divided by the number of replicas before its gradient
is taken (`scale_for_replicas`); the logged value stays unscaled.

Several machines (`multi_worker`): `tf.distribute.MultiWorkerMirroredStrategy`
over the cluster that `TF_CONFIG` names, or over a Slurm allocation of several
tasks. Every worker builds the same input stream of global batches and keeps its
replicas' slices of each (`distribute_per_worker`), so a step on N workers is the
step of one device on the same global batch; BatchNorm is synchronized across all
replicas (`models.build_model`). Only the chief writes the run folder.
"""

from __future__ import annotations

import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
SLURM_PORT_BASE = 8888  # first port of the workers on each node (ICE_TF_SLURM_PORT_BASE)
_MULTI_WORKER = []  # the process's one MultiWorkerMirroredStrategy, once made


def cluster_resolver():
    """The cluster of a multi-worker run: from `TF_CONFIG`, else from a Slurm
    allocation of several tasks (one worker per task, ports from `SLURM_PORT_BASE`).

    Example:
      os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["host1:2222", "host2:2222"]},
                                            "task": {"type": "worker", "index": 0}})
      cluster_resolver().task_id  # 0
    """
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        port = int(os.environ.get("ICE_TF_SLURM_PORT_BASE", SLURM_PORT_BASE))
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
    raise ValueError("strategy='multi_worker' needs a cluster: set TF_CONFIG on every worker "
                     "(docs/guide.md, \"Several machines\") or start one task per worker with srun "
                     "inside a Slurm allocation.")


def get_strategy(name="auto"):
    """Returns a `tf.distribute.Strategy`.

    Args:
      name: "mirrored" (`MirroredStrategy` over all visible GPUs, or over the
        logical CPUs when there is no GPU), "default" (one device), "auto"
        (mirrored when several GPUs are visible, else default) or "multi_worker"
        (`MultiWorkerMirroredStrategy` over `cluster_resolver()`; made once per
        process, before TensorFlow runs any op, as TensorFlow requires).

    Example:
      strategy = get_strategy("auto")  # MirroredStrategy on several GPUs
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}.")
    if name == "multi_worker":
        if not _MULTI_WORKER:
            options = tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=cluster_resolver(), communication_options=options))
        return _MULTI_WORKER[0]
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def num_replicas():
    """Replicas of the strategy in the current context (1 outside any strategy).

    Example:
      num_replicas()  # 1 outside a MirroredStrategy scope
    """
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(loss):
    """Divides a per-replica mean loss so that the summed gradients equal the global mean's.

    Example:
      loss = scale_for_replicas(per_replica_mean_loss)
    """
    replicas = num_replicas()
    return loss if replicas == 1 else loss / tf.cast(replicas, loss.dtype)


def is_multi_worker(strategy):
    """Whether `strategy` spans several worker processes.

    Example:
      is_multi_worker(get_strategy("default"))  # False
    """
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode())


def is_chief(strategy):
    """Whether this process writes the run folder: always, except on the workers of a
    multi-worker run other than the chief (task "chief", else worker 0).

    Example:
      is_chief(get_strategy("default"))  # True
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def distribute_per_worker(strategy, dataset):
    """A distributed dataset of `dataset`'s global batches in which each replica gets
    its slice of every batch: replica r of R takes rows [r B/R, (r + 1) B/R) of each
    component, whatever worker it lives on. The union over replicas is the global
    batch, so a step equals one device's step on it.

    Every batch dimension must divide by the replicas (checked by `check_batches`).

    Example:
      model.fit(distribute_per_worker(strategy, train_ds), steps_per_epoch=100)
    """
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def slices(*batch):
            parts = tf.nest.map_structure(
                lambda t: tf.stack(tf.split(t, replicas)[first:first + local]), batch)
            return tf.data.Dataset.from_tensor_slices(parts if len(batch) > 1 else parts[0])

        return dataset.flat_map(slices)

    return strategy.distribute_datasets_from_function(dataset_fn)


def check_batches(strategy, **batches):
    """Raises ValueError unless every batch size divides by the replicas of `strategy`.

    Example:
      check_batches(strategy, batch_in=128, batch_out=256)
    """
    replicas = strategy.num_replicas_in_sync
    for name, size in batches.items():
        if size % replicas:
            raise ValueError(f"{name}={size} does not divide by the {replicas} replicas; "
                             f"use a multiple of {replicas}.")


__all__ = ["STRATEGIES", "SLURM_PORT_BASE", "cluster_resolver", "get_strategy", "num_replicas",
           "scale_for_replicas", "is_multi_worker", "is_chief", "distribute_per_worker",
           "check_batches"]
