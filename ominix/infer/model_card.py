"""README.md of an export: a model card with the Hugging Face Hub's YAML front matter (license,
datasets, language, tags, library_name, pipeline_tag, model-index with the run's evaluation),
written from the run's config, the checkpoint's state and the run's evaluation results
(``ominix.eval.results``: ``ominix eval``'s and the lm-eval tasks scored during training).

Nothing is invented: a field the run does not know (no license declared, no language set, data
that is not a Hub dataset) is left out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ominix.eval.results import run_results, tasks_origin
from ominix.markdown import loss_cells, table

TAGS = ["ominix", "llama", "pretraining", "text-generation"]
# The Hub's license ids (huggingface.co/docs/hub/repositories-licenses) that are SPDX ids, lowercased;
# any other license is `other` with `license_name` and `license_link`, as the Hub asks
HUB_LICENSES = frozenset("""
afl-3.0 agpl-3.0 apache-2.0 artistic-2.0 bsd-2-clause bsd-3-clause bsd-3-clause-clear bsl-1.0 cc0-1.0
cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cc-by-nd-4.0 cc-by-sa-3.0 cc-by-sa-4.0
cdla-permissive-1.0 cdla-permissive-2.0 cdla-sharing-1.0 ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
eupl-1.2 gpl-2.0 gpl-3.0 isc lgpl-2.1 lgpl-3.0 lppl-1.3c mit mpl-2.0 ms-pl ncsa odbl odc-by ofl-1.1
osl-3.0 pddl postgresql unlicense wtfpl zlib
""".split())
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_datasets(sources: list[str]) -> list[str]:
    """The data sources that are Hub dataset ids (``org/name``, not a path on this machine)."""
    return [s for s in sources if HUB_ID.match(s) and not Path(s).expanduser().exists()]


def numbers(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """A task's ``(metric, value)`` pairs that are numbers (lm-eval also reports names and "N/A")."""
    return [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def license_fields(spdx: str | None) -> dict[str, str]:
    """The Hub's license fields for the SPDX id ``spdx``: the Hub's own id when it has one, else
    ``other`` with the license's name and SPDX page; none when no license was declared."""
    if not spdx:
        return {}
    if spdx.lower() in HUB_LICENSES:
        return {"license": spdx.lower()}
    return {"license": "other", "license_name": spdx.lower(),
            "license_link": f"https://spdx.org/licenses/{spdx}.html"}


def front_matter(source: Any, name: str, results: dict[str, Any] | None,
                 release: Any = None) -> dict[str, Any]:
    """The Hub metadata of the export of ``source`` (an ``ominix.infer.load.ModelSource``);
    ``release`` (a ReleaseConfig, default the run's release section) gives the license."""
    cfg = source.run_config
    meta: dict[str, Any] = {}
    if cfg is not None:
        licenses = (release or cfg.release).licenses
        meta |= license_fields(licenses.distribution.name or licenses.code.name)
        datasets = hub_datasets(cfg.data.sources)
        if datasets:
            meta["datasets"] = datasets
        language = getattr(cfg.release, "language", None) or getattr(cfg.data, "language", None)
        if language:
            meta["language"] = language if isinstance(language, list) else [language]
    meta |= {"tags": TAGS, "library_name": "transformers", "pipeline_tag": "text-generation"}
    ppl = (results or {}).get("perplexity") or {}
    metrics = [{"type": "loss", "name": "validation loss", "value": ppl["loss"]}] if "loss" in ppl else []
    if "perplexity" in ppl:
        metrics.append({"type": "perplexity", "name": "validation perplexity", "value": ppl["perplexity"]})
    entries = []
    if metrics:
        data = results.get("data", {})
        entries.append({
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"type": "ominix-prepared", "name": f"held-out split of {Path(str(data.get('path'))).name}",
                        "split": data.get("split") or "validation"},
            "metrics": metrics,
        })
    for task, values in ((results or {}).get("tasks") or {}).items():  # lm-eval: {task: {metric: value}}
        entries.append({"task": {"type": "text-generation", "name": "Text Generation"},
                        "dataset": {"type": task, "name": task},
                        "metrics": [{"type": metric, "name": f"{task} {metric}", "value": value}
                                    for metric, value in numbers(values)]})
    if entries:
        meta["model-index"] = [{"name": name, "results": entries}]
    return meta


def model_card(source: Any, export_meta: dict[str, Any], name: str, release: Any = None,
               extra: list[str] | None = None) -> str:
    """The README.md text of an export (``export_meta`` as written to ``ominix_export.json``);
    ``release`` as for :func:`front_matter`, ``extra`` lines go before the loading example."""
    import yaml

    from ominix.flops import num_params

    results = run_results(source.run_dir)
    cfg, m, state = source.run_config, source.model, source.state
    matter = front_matter(source, name, results, release)
    out = ["---", yaml.safe_dump(matter, sort_keys=False).rstrip(), "---", "",
           f"# {name}", "",
           f"A LLaMA-style decoder-only language model ({num_params(m):,} parameters, model preset "
           f"`{m.name}`) pretrained with OminiX and exported to the Hugging Face "
           "format: `LlamaForCausalLM`, loadable with transformers and no custom code.", "",
           "## Training", ""]
    rows = [["parameters", f"{num_params(m):,}"], ["layers / hidden / heads / kv heads",
            f"{m.num_hidden_layers} / {m.hidden_size} / {m.num_attention_heads} / {m.kv_heads}"],
            ["vocabulary", m.vocab_size], ["context length", m.max_position_embeddings],
            ["steps", state.get("step")], ["tokens seen", f"{state['tokens']:,}" if "tokens" in state else None]]
    if cfg is not None:
        rows += [["data sources", ", ".join(f"`{s}`" for s in cfg.data.sources)],
                 ["sequence length", cfg.data.seq_len],
                 ["global batch", f"{cfg.schedule.global_batch_size} sequences"],
                 ["optimizer", f"{cfg.optim.optimizer}, peak lr {cfg.optim.lr}"],
                 ["plugin", f"{cfg.parallel.plugin} (tp {cfg.parallel.tp}, pp {cfg.parallel.pp}), "
                            f"{cfg.parallel.precision}"]]
    rows.append(["exported dtype", export_meta["dtype"]])
    out += table(["setting", "value"], rows)
    if results and results.get("perplexity"):
        out += ["", "## Evaluation", "", *table(["split", "loss", "perplexity", "tokens"],
                                                 [[results.get("data", {}).get("split"),
                                                   *loss_cells(results["perplexity"])]])]
    if results and results.get("tasks"):
        out += ["", f"lm-evaluation-harness tasks ({tasks_origin(results)}):", "",
                *table(["task", "metric", "value"], [[task, metric, f"{value:.4f}"]
                                                     for task, values in results["tasks"].items()
                                                     for metric, value in numbers(values)])]
    if cfg is not None:
        declared = release or cfg.release
        out += ["", "## Intended use", "", declared.intended_use, "", "## Limitations", "", declared.limitations]
    pad = export_meta.get("pad_token", {})
    if extra:
        out += ["", *extra]
    out += ["", "## How to load it", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'tok = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")',
            'model = AutoModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")',
            'ids = model.generate(**tok("def", return_tensors="pt"), max_new_tokens=20)',
            "print(tok.decode(ids[0]))",
            "# batches: the tokenizer pads on the left, as generation needs",
            'batch = tok(["a", "a longer prompt"], padding=True, return_tensors="pt")',
            "```", ""]
    if pad.get("from") == "eos":
        out += [f"The tokenizer had no padding token; the export pads with the end-of-text token "
                f"`{pad['token']}` (the attention mask hides the padding).", ""]
    out += ["`ominix_export.json` records the source checkpoint and the sha256 of every weight file.", ""]
    return "\n".join(out)
