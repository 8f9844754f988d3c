"""``launch.slurm``: what the sbatch file asks of SLURM."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from ominix.config.section import Section

# SLURM time limits: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds (sbatch --time), or UNLIMITED.
_SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE")


class SlurmConfig(Section):
    """What the sbatch file asks of SLURM (``launch.launcher: slurm``)."""

    partition: str | None = Field(None, description="sbatch --partition; None = the cluster's default.")
    account: str | None = Field(None, description="sbatch --account; None = the user's default.")
    qos: str | None = Field(None, description="sbatch --qos; None = the default.")
    time: str | None = Field(
        None, description="Time limit (sbatch --time): MM, HH:MM:SS, D-HH, D-HH:MM:SS; None = the partition's.",
    )
    gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs asked per node (--gpus-per-node); None = launch.nproc_per_node; 0 = none.",
    )
    extra_sbatch: list[str] = Field(
        default_factory=list, description="More #SBATCH options, one per entry, e.g. '--constraint=h100'.",
    )
    requeue: bool = Field(
        True, description="On preemption or near the time limit: save a checkpoint, requeue the job, and "
        "resume from the run's latest checkpoint.",
    )
    signal_before_s: int = Field(
        300, ge=10, description="Seconds before the time limit at which the job gets SIGTERM to save (--signal).",
    )

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_TIME.fullmatch(value):
            raise ValueError(f"launch.slurm.time={value!r} is not a SLURM time: use MM, HH:MM:SS, D-HH or D-HH:MM:SS")
        return value

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, lines: list[str]) -> list[str]:
        bad = [line for line in lines if not line.startswith("-") or "\n" in line]
        if bad:
            raise ValueError(f"launch.slurm.extra_sbatch: {bad[0]!r} is not one sbatch option (write '--name=value')")
        return lines
