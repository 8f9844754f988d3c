"""Getting training processes onto machines: hostfiles, SSH, host checks, one machine
(``local``), torchrun per node over SSH (``multinode`` + ``nodeguard``), ``colossalai run``,
SLURM; ``run`` is the one place that chooses among them. ``command`` and ``events`` lie below all."""
