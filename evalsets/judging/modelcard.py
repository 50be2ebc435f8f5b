"""The model card of an adapter: what it was trained on, what it was checked against, how it did.

``model_card`` gathers it (web side: it reads eval versions and comparisons); ``to_markdown`` writes it
in the layout the Hugging Face Hub shows as a repository's README (YAML metadata, then sections).
"""

from __future__ import annotations

import json

from django.db.models import Q

from evalsets.judging import results
from evalsets.judging.models import Comparison
from evalsets.judging.services.regression import latest_regression_pair, max_drop_for
from training.models import TrainingJob
from training.services import snapshot_latest_check


def model_card(job: TrainingJob) -> dict:
    snapshot = job.snapshot
    check = snapshot_latest_check(snapshot)
    manifest = job.manifest or {}
    comparisons = []
    for comparison in Comparison.objects.filter(Q(run_a__job=job) | Q(run_b__job=job)).select_related(
        "run_a__evalset_version__project", "run_b__evalset_version__project"
    ):
        outcome = results.comparison_results(comparison)
        comparisons.append({"comparison": comparison, "results": outcome})
    pair = latest_regression_pair(job)
    regression = None
    if pair is not None:
        regression = results.regression_comparison(*pair, max_drop=max_drop_for(job))
        regression["runs"] = pair
    audit = job.audit or {}
    return {
        "job": job,
        "name": f"goldset-job-{job.pk}-{job.method}",
        "snapshot": snapshot,
        "audit": audit,
        "acknowledged": {a["finding"]: a for a in audit.get("acknowledgements", [])},
        "check": check,
        "config": job.config,
        "metrics": manifest.get("metrics") or {},
        "base_model": manifest.get("base_model") or {"path": job.base_model},
        "base_name": (manifest.get("base_model") or {}).get("id") or job.base_model,
        "library_versions": manifest.get("library_versions") or {},
        "evalset_versions_checked": manifest.get("evalset_versions_checked")
        or (check.evalset_versions if check else []),
        "comparisons": comparisons,
        "regression": regression,
        "manifest_sha256": _manifest_sha(job),
    }


def _manifest_sha(job: TrainingJob) -> str | None:
    from pathlib import Path

    from evalsets.judging.generate import file_sha256

    path = Path(job.output_dir or "") / "adapter" / "manifest.json"
    return file_sha256(path) if job.output_dir and path.is_file() else None


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _flat(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in sorted((metrics or {}).items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flat(value, name + ".")
        elif not isinstance(value, list):
            rows.append((name, value))
    return rows


def _ci(share, fmt: str) -> str:
    return f"{fmt.format(share.value)} [{fmt.format(share.low)}, {fmt.format(share.high)}]"


def _alpha(alpha: float | None) -> str:
    return "n/a" if alpha is None else f"{alpha:.2f}"


def _mode_details(entry: dict) -> list[str]:
    """The figures behind a reference or rubric verdict line: verdict shares, or per-criterion means, with CIs."""
    r, name = entry["results"], entry["comparison"].name
    if r["mode"] == "reference" and r["overall"].get("n_items"):
        o = r["overall"]
        return [
            "",
            f"**{name}**, against the reference answers (share [95% CI]):",
            "",
            "| better | as good | worse | wrong |",
            "|---|---|---|---|",
            "| " + " | ".join(_ci(o[v], "{:.1%}") for v in ("better", "as_good", "worse", "wrong")) + " |",
        ]
    if r["mode"] == "rubric" and any(c.get("mean") for c in r["criteria"]):
        rows = [
            f"| {c['name']} | {c['n_items']} | {_ci(c['mean'], '{:.2f}')} | {_alpha(c['alpha'])} |"
            for c in r["criteria"]
            if c.get("mean")
        ]
        head = ["", f"**{name}**, under {r['rubric']['name']}:", "", "| criterion | n | mean [95% CI] | α |"]
        return [*head, "|---|---|---|---|", *rows]
    return []


def to_markdown(card: dict) -> str:
    """The card as a Hub README: YAML front matter (base_model, library_name, tags), then the sections."""
    job, snapshot = card["job"], card["snapshot"]
    base = card["base_model"]
    base_name = card["base_name"]
    tags = ["goldset", "peft", "lora", job.method.replace("_", "-")]
    if (job.config or {}).get("load_in_4bit", True):
        tags.append("qlora")
    lines = [
        "---",
        f"base_model: {json.dumps(base_name)}",
        "library_name: peft",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {card['name']}",
        "",
        f"A LoRA adapter for `{base_name}`, trained by Goldset job {job.pk} ({job.get_method_display()})",
        f"on the frozen, audited snapshot **{snapshot.name}**.",
        "",
        "## Model details",
        "",
        f"- Base model: `{base_name}`" + (f" (sha256 `{base['sha256']}`)" if base.get("sha256") else ""),
        f"- Method: {job.get_method_display()}",
        f"- Adapter manifest sha256: `{card['manifest_sha256'] or 'n/a'}`",
        f"- Job status: {job.status}",
        "",
        "## Training data",
        "",
        f"- Snapshot: {snapshot.name}, sha256 `{snapshot.sha256}`,",
        f"  {snapshot.sft_count} SFT and {snapshot.dpo_count} DPO records",
        f"- Sources: {', '.join(s.get('project_slug', '?') for s in snapshot.sources) or '—'}",
    ]
    audit = card["audit"]
    if audit:
        lines += ["", f"### Audit {audit.get('id')}", ""]
        findings = audit.get("findings") or []
        if not findings:
            lines.append("No finding reached a warning or blocking gate.")
        for finding in findings:
            ack = card["acknowledged"].get(finding.get("key"))
            note = f" Acknowledged by {ack['by']}: {ack['reason']}" if ack else ""
            lines.append(
                f"- **{finding.get('gate')}** {finding.get('title')} (share {_pct(finding.get('share'))}).{note}"
            )
    check = card["check"]
    lines += ["", "### Contamination check", ""]
    if check is None:
        lines.append("Not checked.")
    else:
        verdict = "passed" if check.passed else "FAILED"
        names = ", ".join(v.get("name", "?") for v in check.evalset_versions) or "no eval set versions"
        lines.append(f"{verdict} against {names} (threshold {check.threshold}), {check.checked_at:%Y-%m-%d}.")
    lines += ["", "## Evaluation", "", "### Blind human comparisons", ""]
    if not card["comparisons"]:
        lines.append("None yet.")
    else:
        lines += ["| comparison | mode | verdict | eval set sha256 | superseded |", "|---|---|---|---|---|"]
        for entry in card["comparisons"]:
            r = entry["results"]
            superseded = r["version"]["superseded_by"] or "no"
            lines.append(
                f"| {entry['comparison'].name} | {r['mode']} | {r['verdict']} | `{r['version']['sha256'][:12]}` "
                f"| {superseded} |"
            )
        for entry in card["comparisons"]:
            lines += _mode_details(entry)
    lines += ["", "### Capability regression", ""]
    reg = card["regression"]
    if reg is None:
        lines.append("Not run yet.")
    else:
        lines += [
            "Same checks, same decoding, base against adapter;",
            f"a drop of more than {_pct(reg['max_drop'])} is flagged.",
            "",
            "| category | n | base | adapter | change [95% CI] | flag |",
            "|---|---|---|---|---|---|",
        ]
        for row in reg["rows"]:
            c = row["change"]
            lines.append(
                f"| {row['category']} | {row['n']} | {_pct(row['base'])} | {_pct(row['adapter'])} | "
                f"{100 * c.value:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}] | {'DROP' if row['flagged'] else ''} |"
            )
    lines += ["", "## Training procedure", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted((card["config"] or {}).items())]
    metrics = _flat(card["metrics"])
    if metrics:
        lines += ["", "### Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics]
    if card["library_versions"]:
        lines += ["", "### Framework versions", ""]
        lines += [f"- {k} {v}" for k, v in sorted(card["library_versions"].items())]
    lines += ["", "Goldset judges models with people, never with an LLM judge on an eval set.", ""]
    return "\n".join(lines)
