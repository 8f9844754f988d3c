"""MODEL_CARD.md from the run's config, checkpoints, metrics, data manifest and evaluation, and the
Markdown form of a MOF classification (MOF_REPORT.md)."""

from __future__ import annotations

from typing import Any

from ominix.eval.results import tasks_origin
from ominix.markdown import loss_cells, table
from ominix.release.mof import ROMAN, Classification, license_facts
from ominix.release.run_record import card_lines, training_record

STATUS_TEXT = {
    "type-appropriate": "yes",
    "open": "yes (open, not type-appropriate)",
    "unlicensed": "no license",
    "invalid": "license not open",
    "absent": "-",
}


def model_card(art: Any, release: Any, eval_results: dict[str, Any] | None) -> str:
    from ominix.flops import num_params

    cfg, state = art.config, art.final.state
    m, o, s, p = cfg.model, cfg.optim, cfg.schedule, cfg.parallel
    record = training_record(art.metrics)
    out = [
        f"# {release.name} (version {release.version})",
        "",
        f"A LLaMA-style decoder-only language model pretrained from scratch with OminiX"
        f"{' (continued from ' + m.init_from + ')' if m.init_from else ''}. "
        f"Produced by {release.producer or 'an unnamed producer'}"
        f"{'; contact ' + release.contact if release.contact else ''}.",
        "",
        "## Architecture",
        "",
        *table(["setting", "value"], [
            ["parameters", f"{num_params(m):,}"],
            ["layers", m.num_hidden_layers], ["hidden size", m.hidden_size],
            ["MLP size (SwiGLU)", m.intermediate_size], ["attention heads", m.num_attention_heads],
            ["key/value heads", m.kv_heads], ["vocabulary", m.vocab_size],
            ["context length", m.max_position_embeddings], ["RoPE theta", m.rope_theta],
            ["tied embeddings", m.tie_word_embeddings],
        ]),
        "",
        "## Training data",
        "",
    ]
    manifest = art.manifest
    if manifest:
        train = manifest["splits"].get("train", {})
        out += [f"Prepared data `{art.data_dir}` (see DATA_CARD.md): sources "
                + ", ".join(f"`{src['source']}`" for src in manifest.get("sources", []))
                + f"; {train.get('documents', 0):,} training documents, {train.get('tokens', 0):,} training "
                f"tokens in blocks of {manifest.get('seq_len')}; tokenizer vocabulary "
                f"{manifest.get('tokenizer', {}).get('vocab_size')}.", ""]
    else:
        out += ["The prepared data directory was not found, so the training data is not described.", ""]
    out += [
        f"Tokens seen in training: {state.get('tokens', 0):,} over {state.get('step')} optimizer steps.",
        "",
        "## Hyper-parameters",
        "",
        *table(["setting", "value"], [
            ["optimizer", f"{o.optimizer} (beta1 {o.beta1}, beta2 {o.beta2}, eps {o.eps})"],
            ["learning rate", f"{o.lr} peak, {o.min_lr} final, {s.warmup_steps} warmup steps, {s.decay} decay"],
            ["weight decay", o.weight_decay], ["gradient clipping", o.grad_clip],
            ["global batch", f"{s.global_batch_size} sequences x {cfg.data.seq_len} tokens"],
            ["micro batch", s.micro_batch_size], ["seed", s.seed],
            ["precision", p.precision], ["plugin", f"{p.plugin} (tp {p.tp}, pp {p.pp})"],
        ]),
        "",
        "## Compute",
        "",
        *card_lines(record),
    ]
    out += ["", "## Evaluation", ""]
    if eval_results:
        ppl = eval_results.get("perplexity")
        data = eval_results.get("data", {})
        if ppl:
            out += [f"Perplexity on split `{data.get('split')}` of `{data.get('path')}` "
                    "(eval/eval_results.json has every number):", ""]
            rows = [["all", *loss_cells(ppl)]] + [[name, *loss_cells(v)]
                                                  for name, v in ppl.get("per_source", {}).items()]
            out += table(["source set", "loss", "perplexity", "tokens"], rows)
        if eval_results.get("tasks"):
            where = "" if ppl else "; eval/eval_results.json has every number"
            out += [""] * bool(ppl) + [f"lm-evaluation-harness tasks ({tasks_origin(eval_results)}{where}):", ""]
        for task, metrics in (eval_results.get("tasks") or {}).items():  # {task: {metric: value}}
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            out.append(f"- lm-eval `{task}`: {shown}")
    else:
        out.append("No evaluation results were found (run `ominix eval --model RUN_DIR`).")
    out += ["", "## Intended use", "", release.intended_use, "", "## Limitations", "", release.limitations, ""]
    return "\n".join(out)


def report_markdown(result: Classification, title: str) -> str:
    """The classification as Markdown: class, progress per class, each component, what is missing."""
    out = [f"# MOF classification of {title}", "", f"**{result.label}**", "",
           "Progress: " + ", ".join(f"Class {ROMAN[c]} {result.progress[c]:.1f} %" for c in (3, 2, 1)), ""]
    out += [*(f"Note: {note}" for note in result.notes), *([""] if result.notes else [])]
    rows = [[c.name, ROMAN[c.mof_class], "required" if c.required else "optional",
             "yes" if c.present else "no", c.license or "", STATUS_TEXT[c.status], c.path or ""]
            for c in result.components]
    out += table(["component", "class", "", "present", "license", "acceptable", "path"], rows)
    nxt = result.next_class()
    if nxt is not None:
        out += ["", f"## Missing for Class {ROMAN[nxt]}", ""]
        out += [f"- {name}: {why}" for name, why in missing_reasons(result, nxt)]
    warnings = [c for c in result.components if c.status == "open"]
    if warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {c.name}: {c.license} is open but not a type-appropriate {c.content_type} license"
                for c in warnings]
    return "\n".join(out) + "\n"


def missing_reasons(result: Classification, cls: int) -> list[tuple[str, str]]:
    """``(component, why)`` for each required component of class ``cls`` that is not included."""
    by_name = {c.name: c for c in result.components}
    reasons = []
    for name in result.missing[cls]:
        c = by_name[name]
        if not c.present:
            why = "not in the release" + (f" ({result.hints[name]})" if name in result.hints else "")
        elif c.status == "unlicensed":
            why = f"present but has no license (declare a {c.content_type} license)"
        elif c.license not in license_facts()["known"]:
            why = f"license {c.license!r} is not an SPDX id MOT knows (use an open {c.content_type} license)"
        else:
            why = f"license {c.license} is not open (use an open {c.content_type} license)"
        reasons.append((name, why))
    return reasons
