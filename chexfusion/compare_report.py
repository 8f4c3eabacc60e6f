"""The Markdown of ``chexfusion compare``: one section per model against the reference, then the ranking."""

from __future__ import annotations

from .paired_bootstrap import MAP_KEYS

MAP_LABELS = {"mAP": "mAP", "head_mAP": "head mAP", "medium_mAP": "medium mAP", "tail_mAP": "tail mAP"}


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _p(value) -> str:
    if value is None:
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _ci(ci) -> str:
    return "n/a" if ci is None else f"{ci[0]:+.4f} to {ci[1]:+.4f}"


def _headline(pair: dict, unit: str) -> list[str]:
    ref, model = pair["reference"], pair["model"]
    rows = [f"| metric | {ref} | {model} | {ref} - {model} | 95% CI | p | test |", "|---|---|---|---|---|---|---|"]
    for key in MAP_KEYS:
        d = pair["maps"][key]
        rows.append(f"| {MAP_LABELS[key]} | {_num(d['a'])} | {_num(d['b'])} | {_signed(d['diff'])} | {_ci(d['ci'])} "
                    f"| {_p(d['p'])} | paired bootstrap by {unit} |")
    m = pair["mAUROC"]
    rows.append(f"| mAUROC ({m['n_classes']} classes) | {_num(m['mauc_a'])} | {_num(m['mauc_b'])} "
                f"| {_signed(m['diff'])} | {_ci(m['ci'])} | {_p(m['p'])} | DeLong, clustered by {unit} |")
    return rows


def _per_class(pair: dict, correction: str) -> list[str]:
    ref, model = pair["reference"], pair["model"]
    rows = [f"| class | group | positives | AUROC {ref} | AUROC {model} | difference | p | p ({correction}) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, c in pair["per_class"].items():
        rows.append(f"| {name} | {c['group'] or 'n/a'} | {c['n_pos']} | {_num(c.get('auc_a'))} "
                    f"| {_num(c.get('auc_b'))} | {_signed(c.get('diff'))} | {_p(c.get('p'))} "
                    f"| {_p(c['p_adjusted'])} |")
    return rows


def _ranking(result: dict) -> list[str]:
    ranking = result["ranking"]
    count = len(ranking["models"])
    rows = ["| model | mAP | rank | mean rank | " + " | ".join(f"rank {r + 1}" for r in range(count)) + " |",
            "|---|---|---|---|" + "---|" * count]
    for m, name in enumerate(ranking["models"]):
        shares = " | ".join(f"{100 * s:.1f}%" for s in ranking["rank_share"][m])
        rows.append(f"| {name} | {_num(ranking['mAP'][m])} | {ranking['rank'][m]} "
                    f"| {ranking['mean_rank'][m]:.2f} | {shares} |")
    return rows


def markdown(result: dict) -> str:
    """compare.md: per pair the headline tests and the per-class DeLong tests, then the ranking stability."""
    boot, unit = result["bootstrap"], result["unit"]
    units = "studies" if unit == "study" else "images"
    lines = ["# chexfusion compare", "",
             f"{result['n_images']} images in {result['n_studies']} studies, labels `{result['labels']}`; "
             f"groups from {'training' if result['prevalence_source'] == 'train' else 'evaluation-set'} "
             f"prevalence. Bootstrap: {boot['n']} resamples of the {units}, the same for every model "
             f"(seed {boot['seed']}), percentile intervals. Per-class p-values corrected by "
             f"{result['correction'].capitalize()} over the classes tested.", ""]
    for pair in result["pairs"]:
        lines += [f"## {pair['reference']} vs {pair['model']}", "", *_headline(pair, unit), "",
                  *_per_class(pair, result["correction"]), ""]
    lines += [f"## Ranking stability (mAP over {result['ranking']['n_replicates']} bootstrap resamples)", "",
              *_ranking(result), ""]
    return "\n".join(lines)
