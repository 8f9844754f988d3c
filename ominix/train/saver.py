"""The training run's checkpoint saves: each one is announced on the console and recorded in
metrics.jsonl; a background write (``checkpoint.async_save``) is reported once it has finished."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ominix import checkpoint as ckpt


class Saver:
    """Saves of one run. ``facts``: what every checkpoint's state.json records beside the loop
    state (world size, parallel layout, plugin, the data manifest, the model shape)."""

    def __init__(self, cfg: Any, engine: Any, loader: Any, run_dir: Path, config_yaml: str,
                 facts: dict[str, Any], out: Any, meter: Any, watchdog: Any) -> None:
        self.c, self.engine, self.loader, self.run_dir = cfg.checkpoint, engine, loader, run_dir
        self.config_yaml, self.facts = config_yaml, facts
        self.out, self.meter, self.watchdog = out, meter, watchdog
        self.background = ckpt.BackgroundSave() if self.c.async_save else None

    def save(self, loop: dict[str, Any], announce: bool = True) -> Path:
        """Save the loop state ``loop`` (a ``LoopState`` as a dict); returns the step directory.
        The time it takes is paused out of the throughput and is no hang for the watchdog."""
        info = {"loop": loop, "step": loop["step"], "tokens": loop["tokens"],
                "last_loss": loop["last_loss"], **self.facts}
        self.meter.pause()
        self.watchdog.beat()  # the save is timed from the end of the step before it
        began = time.perf_counter()
        self.wait()  # the previous background write, if still going
        c = self.c
        path = ckpt.save_checkpoint(self.engine, self.loader, self.run_dir, info, self.config_yaml,
                                    c.keep_last, c.keep_every, c.save_optimizer, self.background)
        if self.background is None:
            seconds = time.perf_counter() - began
            self._report(path, loop["step"], seconds, seconds, announce)
        self.watchdog.beat()
        self.meter.resume()
        return path

    def report_finished(self) -> None:
        """Report a background write that has finished since the last look, without waiting."""
        if self.background is not None and (timing := self.background.finished()):
            self._report(timing.path, timing.step, timing.seconds, timing.blocked)

    def wait(self, announce: bool = True) -> None:
        """Wait for a background write still going (``latest`` names it afterwards) and report it;
        ``announce`` False records it without a console line."""
        if self.background is not None and (timing := self.background.wait()):
            self._report(timing.path, timing.step, timing.seconds, timing.blocked, announce)

    def _report(self, path: Path, step: int, seconds: float, blocked: float,
                announce: bool = True) -> None:
        size = sum(f.stat().st_size for f in ckpt.files_under(path))
        if announce:
            background = self.background is not None
            waited = f" ({blocked:.1f} s of it blocking training)" if background else ""
            self.out.line(f"saved checkpoint {path} ({size / 2**30:.2f} GiB) in {seconds:.1f} s"
                          f"{waited}")
        self.out.record("checkpoint", {"step": step, "action": "save", "seconds": seconds,
                                       "blocked_seconds": blocked, "bytes": size})
