"""Phone-resident jobs (JobConfig.data_on_phone): each phone trains on files already in its work dir, and
the server never sends it a sample.

Preparing such a job writes no shard: every eligible phone becomes a participant whose data the server
does not know. With `phone_data_report` its first accepted update tells its sample count and label
histogram (recorded once, then held to: a phone cannot change its weight mid-job); without, every update
weighs 1 and nothing is told. The job's data set is only the server's held-out test set (and the model's
input shape and classes); the phones' files must fit it, and a phone without usable data fails its round
with the agent's reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction

from devices.models import Device
from training.engine.jobdata import build_strategy, job_model_spec, load_job_dataset
from training.engine.runtimes.agent_output import phone_json
from training.fl.evaluate import evaluate_weights
from training.fl.nets import initial_weights
from training.jobs import dispatch, services, storage
from training.jobs.config import JobConfig
from training.models import Job, Participant

RESULT_MAX_CHARS = 64 * 1024
MAX_REPORTED_SAMPLES = 10_000_000  # a phone's claim beyond this is not believed
UNREPORTED = 1  # the weight of an update whose phone tells nothing of its data


def agent_config(config: JobConfig) -> dict[str, Any]:
    """What config.json says instead of a shard: where the phone's files are and what it may report."""
    return {"local_data": {"dir": config.phone_data_dir, "report": config.phone_data_report}}


def describe_unread(config: JobConfig) -> str:
    where = f"{config.phone_data_dir}/ on the phone"
    return (
        f"its own files in {where} (not read yet)"
        if config.phone_data_report
        else (f"its own files in {where} (counts withheld by the job)")
    )


def prepare_resident(job: Job, config: JobConfig, pool: list[Device]) -> None:
    """Participants without shards, the round-0 model and its accuracy on the held-out set; then run."""
    splits = load_job_dataset(config)
    samples = 0 if config.phone_data_report else UNREPORTED
    rows = [
        Participant(
            job=job,
            device=device,
            client_index=index,
            num_samples=samples,
            label_counts=[],
            shard_sha256="",
            data_source=describe_unread(config),
        )
        for index, device in enumerate(pool)
    ]
    spec = job_model_spec(config, splits)
    strategy = build_strategy(config, len(pool), None)
    state = strategy.initial_state(initial_weights(spec, config.seed))
    evaluation = evaluate_weights(spec, state.weights, splits.test.x, splits.test.y)
    storage.save_checkpoint(job.pk, 0, state, {"accuracy": evaluation.accuracy, "loss": evaluation.loss})
    with transaction.atomic():
        Participant.objects.bulk_create(rows)
        job.last_accuracy, job.last_loss = evaluation.accuracy, evaluation.loss
        job.save(update_fields=["last_accuracy", "last_loss"])
        services.log(
            job.pk,
            f"prepared: {len(pool)} phones train on their own files ({config.phone_data_dir}/ in each work "
            f"dir; no shard is sent); held-out set: {len(splits.test)} {config.dataset} samples; "
            f"initial accuracy {evaluation.accuracy:.3f}",
        )
        if services.mark_running(job):
            dispatch.start_round_on_commit(job.pk)


def record_first_report(participant: Participant, result_path: Path, num_classes: int) -> int:
    """The sample count this phone's update is weighed by. A reporting phone's first accepted claim is
    recorded (count, label histogram, the file it read) and held to afterwards; an unusable claim leaves
    the record alone, and the upload check then rejects the update with the reason."""
    if participant.num_samples:
        return participant.num_samples
    try:
        report = phone_json(result_path.read_text(errors="replace"), max_chars=RESULT_MAX_CHARS)
    except (OSError, ValueError):
        return 0
    if not isinstance(report, dict):
        return 0
    samples, local = report.get("samples"), report.get("local_data")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 < samples <= MAX_REPORTED_SAMPLES:
        return 0
    counts = local.get("label_counts") if isinstance(local, dict) else None
    if not _histogram_fits(counts, samples, num_classes):
        return 0
    name = local.get("file") if isinstance(local, dict) else None
    shown = name if isinstance(name, str) and name in ("train.npz", "train.csv") else "its own file"
    updated = Participant.objects.filter(pk=participant.pk, num_samples=0).update(
        num_samples=samples,
        label_counts=counts,
        data_source=f"its own {shown} on the phone: {samples} samples (reported by the phone)",
    )
    if updated:
        participant.num_samples = samples
        return samples
    participant.refresh_from_db()
    return participant.num_samples


def _histogram_fits(counts: Any, samples: int, num_classes: int) -> bool:
    return (
        isinstance(counts, list)
        and len(counts) == num_classes
        and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        and sum(counts) == samples
    )


# --------------------------------------------------------------- files for phones (virtual lab seeding)
SEED_FOLDER = "phone-{index:04d}"


def write_seed_files(
    train_x: Any, train_y: Any, parts: list[Any], out_dir: Path, *, data_dir: str = "data", fmt: str = "npz"
) -> list[int]:
    """One folder per phone, `phone-<index>/<data_dir>/train.npz` (or .csv) holding its part of a data
    set, the layout `virtual_lab --seed-data` copies into each phone's work dir. Returns each phone's
    sample count. Features are stored flat in CSV (one column per value) and in their shape in NPZ."""
    import numpy as np  # noqa: PLC0415

    from training.fl.data_formats.writers import npz_bytes  # noqa: PLC0415

    x_all, y_all = np.asarray(train_x), np.asarray(train_y)
    sizes = []
    for index, indices in enumerate(parts):
        folder = Path(out_dir) / SEED_FOLDER.format(index=index) / data_dir
        folder.mkdir(parents=True, exist_ok=True)
        x, y = x_all[np.asarray(indices, dtype=np.int64)], y_all[np.asarray(indices, dtype=np.int64)]
        if fmt == "npz":
            (folder / "train.npz").write_bytes(npz_bytes(x, y))
        else:
            flat = x.reshape(len(y), -1)
            header = ",".join([*(f"f{i}" for i in range(flat.shape[1])), "label"])
            lines = [
                header,
                *(
                    ",".join([*(f"{v:.6g}" for v in row), str(int(label))])
                    for row, label in zip(flat, y, strict=True)
                ),
            ]
            (folder / "train.csv").write_text("\n".join(lines) + "\n")
        sizes.append(len(y))
    return sizes
