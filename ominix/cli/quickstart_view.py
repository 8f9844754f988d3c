"""How ``ominix quickstart`` looks: a rule and the equivalent command per stage, each stage's outcome,
and the closing summary, printed with rich from the events and summary of ``ominix.quickstart.run``."""

from __future__ import annotations

import os
from typing import Any

from ominix.quickstart import SUMMARY


class QuickstartView:
    """Prints ``run``'s events on ``console``; ``view.log`` prints the data preparation's notes."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        show = {"stage": self._stage, "entropy": self._entropy, "export": self._export,
                "samples": self._samples, "eval": self._eval, "bundle": self._bundle}
        show[kind](**info)

    def log(self, line: str) -> None:
        self.console.print(line, highlight=False)

    def _stage(self, n: int, total: int, name: str, command: str) -> None:
        self.console.rule(f"[bold]{n}/{total} {name}")
        self.console.print(f"[dim]$ {command}[/]", soft_wrap=True, highlight=False)

    def _entropy(self, entropy: float) -> None:
        self.console.print(f"unigram entropy of the training tokens: {entropy:.4f} nats/token")

    def _export(self, out: str, max_abs_logit_diff: float) -> None:
        self.console.print(f"exported to {out}; max |logit diff| vs transformers {max_abs_logit_diff:.2g}")

    def _samples(self, samples: list[dict[str, Any]]) -> None:
        for s in samples:
            self.console.print(f"[bold]{s['prompt']}[/]{s['completion']}", highlight=False, markup=True)

    def _eval(self, loss: float, perplexity: float, entropy: float) -> None:
        self.console.print(f"validation loss {loss:.4f} (perplexity {perplexity:.1f}) vs unigram "
                           f"entropy {entropy:.4f}")

    def _bundle(self, label: str, bundle: str) -> None:
        self.console.print(f"{label}; bundle {bundle}")


def print_summary(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.rule("[bold]summary")
    table = Table(show_header=False, box=None)
    for name, path in summary["artifacts"].items():
        table.add_row(name, path)
    console.print(table)
    c = summary["loss_curve"]
    console.print(f"train loss  {c['first']:.3f} {c['sparkline']} {c['last']:.3f}", highlight=False)
    verdict = "learned from context" if summary["learned"] else "NOT below the unigram entropy"
    console.print(f"eval loss   {summary['eval_loss']:.4f} (perplexity {summary['eval_perplexity']:.1f}) vs "
                  f"unigram entropy {summary['unigram_entropy']:.4f}: {verdict}", highlight=False)
    console.print(f"resumed     from step {summary['resumed']['from_step']} ({len(summary['resumed']['log'])} resume)")
    tf = summary["tflops_per_device"]
    mfu = f"{summary['mfu']:.1%}" if summary["mfu"] is not None else summary["mfu_note"]
    console.print(f"MFU         {mfu}" + (f" ({tf:.3f} TFLOP/s per process measured)" if tf else ""), soft_wrap=True)
    console.print(f"MOF         [bold]{summary['mof']['label']}[/]")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in summary["stage_seconds"].items())
    console.print(f"stages      {times}", soft_wrap=True)
    console.print("\nThe same on a GPU cluster (llama2-7b preset, 4 nodes x 8 GPUs; add --dry-run to see the plan):")
    for cmd in summary["gpu_cluster"]:
        console.print(f"  {cmd}", highlight=False, soft_wrap=True)
    console.print(f"\ndone: {os.path.join(summary['out'], SUMMARY)}")
