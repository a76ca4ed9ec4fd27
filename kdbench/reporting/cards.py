"""Model cards: one JSON file per leaderboard row, in the spirit of RobustBench's `model_info/<dataset>/<threat
model>/<Model>.json` entries, written by the report step as a pure function of the records.

A card says what the row's model is (dataset, threat model and eps, architecture, parameters and MACs), how it
was made (teacher with its own clean and robust accuracy, method and hyper-parameters, training settings), what
it scored (clean, worst case in each threat model, each attack, transfer, certified accuracy, corruptions,
calibration, sanity flags, how much the convergence check lowered the worst case; mean, std and each seed, over
the seeds that count: a seed whose training failed is listed in `failed_seeds` instead), what it cost (train and
eval seconds, device, versions) and which weights these are (file and SHA-256 per seed).

Accuracies are fractions in [0, 1] stored as numbers (RobustBench stores percent strings). The RobustBench key
names are kept where they mean the same: `name`, `dataset`, `architecture`, `eps`, `clean_acc`,
`additional_data`, `number_forward_passes`; `worst_case_acc` is the per-example worst case over every attack
kdbench ran at the headline eps, and `autoattack_acc` appears when an AutoAttack metric is recorded. With an L2
threat model, `threat_models` names both (norm -> headline radius) and `l2_worst_case_acc` is the L2 worst case at
the L2 headline radius; `certified` holds the certified accuracies of randomized smoothing and `calibration` the
ECE, NLL and Brier score (better lower) on clean data and under the corruptions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from ..core.metric_names import LOWER_IS_BETTER, at_eps, try_parse
from .rows import counted, eval_config, group_key, row_label

CARD_SCHEMA = 1
CARDS_DIR = "cards"


def card_file(key: tuple) -> str:
    """The card of the row `key` (`group_key`), relative to the results folder: readable and unique."""
    dataset, pair, role, method, kind = (str(k) for k in key[:5])
    parts = (dataset, pair.replace("->", "-to-"), method, "" if kind in method else kind)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(p for p in parts if p)).strip("_")
    digest = hashlib.sha256(json.dumps([str(k) for k in key]).encode()).hexdigest()[:8]
    return f"{CARDS_DIR}/{slug}-{digest}.json"


def _stats(values: dict) -> dict:
    """{seed: value} -> mean, std (sample; null for one seed, which measures no spread) and the values per seed."""
    from ..stats.spread import mean_std

    mean, std = mean_std(list(values.values()))
    return {"mean": mean, "std": None if math.isnan(std) else std,
            "per_seed": {str(s): v for s, v in sorted(values.items())}}


def _metric(recs: list[dict], name: str) -> dict | None:
    values = {r["seed"]: r["metrics"][name] for r in recs if name in r["metrics"]}
    return _stats(values) if values else None


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def teacher_card(info: dict | None, records: list[dict], eps: str) -> dict | None:
    """The row's teacher: what the student records say about it, and its own clean and worst-case accuracy
    from its reference records (same dataset, architecture and kind)."""
    if not info:
        return None
    refs = counted([r for r in records if r["role"] == "teacher" and r["student"]["arch"] == info.get("arch")
                    and r.get("teacher_kind") == info.get("kind")])[0]
    out = {k: info.get(k) for k in ("kind", "arch", "params", "macs", "seeds", "pretrained") if info.get(k) is not None}
    out["clean_acc"] = _mean([r["metrics"]["clean"] for r in refs if "clean" in r["metrics"]])
    if out["clean_acc"] is None:  # no reference record: the clean accuracy the student job measured
        out["clean_acc"] = info.get("clean")
    worst = at_eps("robust", eps)
    out["worst_case_acc"] = _mean([r["metrics"][worst] for r in refs if worst in r["metrics"]])
    out["reference_records"] = sorted(f"records/{r['job_id']}.json" for r in refs)
    return out


def build_card(key: tuple, recs: list[dict], all_records: list[dict], suite: str, label: str) -> dict:
    """The card of one leaderboard row from its records (one per seed): its scores over the seeds that count,
    the seeds whose training failed (`rows.counted`) listed apart."""
    recs = sorted(recs, key=lambda r: r["seed"])
    first = recs[0]
    kept, failed = counted(recs)
    headline = first.get("headline_eps")
    e = f"{headline:g}" if headline is not None else ""
    names = sorted({m for r in kept for m in r["metrics"]})
    kinds = {m: (try_parse(m).kind if try_parse(m) else "") for m in names}
    worst_kinds, not_attacks = ("robust", "robust-l2"), ("robust", "robust-l2", "sweep", "certified-l2")
    attacks = [m for m in names if "@" in m and kinds[m] not in not_attacks]
    corruption = [m for m in names if m.startswith(("corruption/", "cifar-c/")) or m in ("mca", "relative_mca")]
    calibration = [m for m in names if kinds[m] in LOWER_IS_BETTER]
    h2 = eval_config(first).get("headline_eps_l2")
    worst_l2 = _metric(kept, at_eps("robust-l2", h2)) if h2 is not None else None
    flags: dict[str, int] = {}
    for r in recs:
        for f in r["flags"]:
            flags[f] = flags.get(f, 0) + 1
    config = first.get("config") or {}
    env = [r.get("env") or {} for r in recs]
    clean, worst, aa = (_metric(kept, "clean"), _metric(kept, at_eps("robust", e)),
                        _metric(kept, at_eps("autoattack", e)))
    card = {
        "card_schema": CARD_SCHEMA,
        "name": label,
        "suite": suite,
        "dataset": first["dataset"],
        "threat_model": "Linf",
        "eps": headline,
        **({"threat_models": {"Linf": headline, "L2": h2}} if h2 is not None else {}),
        "eps_scale": "[0, 1] pixel values",
        "architecture": first["student"]["arch"],
        "params": first["student"].get("params"),
        "macs": first["student"].get("macs"),
        "additional_data": False,
        "number_forward_passes": 1,
        "role": first["role"],
        "method": first["method"],
        "method_params": first.get("method_params", {}),
        "teacher": teacher_card(first.get("teacher"), all_records, e),
        "training": config.get("train"),
        "evaluation": config.get("eval") or (config.get("protocol_job") or {}).get("eval"),
        "seeds": [r["seed"] for r in kept],
        "failed_seeds": [{"seed": r["seed"], "clean": r["metrics"].get("clean"),
                          "record": f"records/{r['job_id']}.json"} for r in failed],
        "clean_acc": clean["mean"] if clean else None,
        "worst_case_acc": worst["mean"] if worst else None,
        **({"autoattack_acc": aa["mean"]} if aa else {}),
        **({"l2_worst_case_acc": worst_l2["mean"]} if worst_l2 else {}),
        "metrics": {"clean": clean, at_eps("robust", e): worst,
                    **({at_eps("robust-l2", h2): worst_l2} if worst_l2 else {})},
        "per_attack": {m: _metric(kept, m) for m in attacks},
        "worst_case": {m: _metric(kept, m) for m in names if kinds[m] in worst_kinds},
        "corruptions": {m: _metric(kept, m) for m in corruption},
        "calibration": {m: _metric(kept, m) for m in calibration},
        **({"certified": {m: _metric(kept, m) for m in names if kinds[m] == "certified-l2"},
            "certify": eval_config(first).get("certify")} if any(kinds[m] == "certified-l2" for m in names) else {}),
        "flags": flags,
        "convergence_drop": _convergence_drop(kept),
        "compute": {
            "train_seconds": {str(r["seed"]): r.get("train_seconds") for r in recs},
            "eval_seconds": {str(r["seed"]): r.get("eval_seconds") for r in recs},
            "device": sorted({str(v.get("device")) for v in env}),
            "threads": sorted({v.get("threads") for v in env if v.get("threads") is not None}),
            "torch": sorted({str(v.get("torch")) for v in env}),
            "kdbench": sorted({str(v.get("kdbench")) for v in env}),
            "git": sorted({str((v.get("git") or {}).get("commit")) for v in env}),
        },
        "weights": [{"seed": r["seed"], "job_id": r["job_id"], **((r["student"].get("weights")) or {})} for r in recs],
        "records": [f"records/{r['job_id']}.json" for r in recs],
    }
    if first["role"] == "external":
        card["external"] = {k: v for k, v in (first.get("external") or {}).items() if k != "protocol_job"}
        card["transfer_source"] = first.get("transfer_source")
    return card


def _convergence_drop(recs: list[dict]) -> dict | None:
    """How much the convergence check (the strongest attack at 2x steps with restarts) lowered the worst case at
    the headline eps: mean, std and per seed, over the seeds whose records hold the check."""
    from ..evaluation.sanity import convergence_check

    checks = {r["seed"]: convergence_check(r.get("flag_evidence") or {}) for r in recs}
    drops = {s: c["robust"] - c["robust_with_strong_attack"] for s, c in checks.items() if c}
    return _stats(drops) if drops else None


def build_cards(records: list[dict], suite: str) -> dict[str, dict]:
    """Every row's card, keyed by its file (relative to the results folder)."""

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    return {card_file(key): build_card(key, recs, records, suite, row_label(key[3], key[4] or None, key[2]))
            for key, recs in sorted(groups.items())}
