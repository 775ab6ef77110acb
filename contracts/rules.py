"""Body-location rules: a pure function from (probabilities, body site, rules) to a ranking.

A rule says that, at one body site, some classes are implausible enough to be removed from
the ranking; the remaining probabilities are renormalised to sum to 1. Malignant classes are
never excluded unless the rule says ``allow_malignant: true`` explicitly, and ``unknown``
excludes nothing. Import-light on purpose (numpy, yaml, the label contract): the offline
evaluation (training.evaluation.scoring) calls the same function as the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from contracts.labels import BODY_SITES, CLASS_INDEX, CLASSES, MALIGNANT, UNKNOWN_SITE

_RULE_KEYS = {"id", "site", "exclude", "reason", "allow_malignant", "evidence"}


class RulesError(ValueError):
    """The rules file cannot be used; the message says which rule and how to fix it."""


@dataclass(frozen=True)
class Rule:
    """At ``site``, remove the classes in ``exclude`` from the ranking, for ``reason``."""

    id: str
    site: str
    exclude: tuple[str, ...]
    reason: str
    allow_malignant: bool = False
    evidence: str = ""


@dataclass(frozen=True)
class Rules:
    """A validated set of rules, indexed by site. Build it with :func:`load_rules`."""

    rules: tuple[Rule, ...]
    source: str = ""

    def for_site(self, site: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.site == site)


@dataclass(frozen=True)
class Exclusion:
    """A class removed by a rule, with the probability the model gave it."""

    cls: str
    rule_id: str
    reason: str
    original_prob: float


@dataclass(frozen=True)
class RuleResult:
    """The ranking after the rules (highest first, sums to 1) and what they removed."""

    ranking: list[tuple[str, float]]
    excluded: list[Exclusion]


def validate_rules(rules: Sequence[Rule], source: str = "rules") -> Rules:
    """Check rules against the label contract and return them as :class:`Rules`.

    Raises:
        RulesError: unknown site or class, a rule for ``unknown``, a malignant class excluded
            without ``allow_malignant: true``, a duplicate id, or a site left with no class.
    """
    seen: set[str] = set()
    excluded_by_site: dict[str, set[str]] = {}
    for rule in rules:
        where = f"{source}: rule {rule.id!r}"
        if not rule.id or rule.id in seen:
            raise RulesError(f"{where}: every rule needs a unique, non-empty id")
        seen.add(rule.id)
        if rule.site == UNKNOWN_SITE:
            raise RulesError(f"{where}: site 'unknown' must exclude nothing; remove the rule")
        if rule.site not in BODY_SITES:
            raise RulesError(f"{where}: unknown site {rule.site!r}; use one of {BODY_SITES}")
        if not rule.exclude:
            raise RulesError(f"{where}: 'exclude' is empty; list at least one class")
        unknown = [c for c in rule.exclude if c not in CLASS_INDEX]
        if unknown:
            raise RulesError(f"{where}: unknown classes {unknown}; use some of {CLASSES}")
        malignant = sorted(set(rule.exclude) & MALIGNANT)
        if malignant and not rule.allow_malignant:
            raise RulesError(
                f"{where}: excludes malignant {malignant}; a rule may do that only with "
                "'allow_malignant: true' set explicitly (and a clinician's sign-off)"
            )
        if not rule.reason.strip():
            raise RulesError(f"{where}: 'reason' is empty; say why the classes are excluded")
        excluded_by_site.setdefault(rule.site, set()).update(rule.exclude)
    for site, excluded in excluded_by_site.items():
        if excluded >= set(CLASSES):
            raise RulesError(f"{source}: the rules exclude every class at {site!r}")
    return Rules(tuple(rules), source)


def load_rules(path: str | Path) -> Rules:
    """Read and validate a rules YAML file (see configs/body_location_rules.yaml).

    Raises:
        RulesError: the file is missing, is not the expected YAML shape, or fails validation.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RulesError(f"cannot read rules file {path}: {e}; set SKIN_RULES_PATH") from e
    except yaml.YAMLError as e:
        raise RulesError(f"rules file {path} is not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise RulesError(f"{path}: expected a mapping with a list under 'rules'")
    rules = []
    for i, item in enumerate(doc.get("rules") or []):
        if not isinstance(item, dict):
            raise RulesError(f"{path}: rule #{i + 1} is not a mapping")
        extra = set(item) - _RULE_KEYS
        if extra:
            raise RulesError(f"{path}: rule #{i + 1} has unknown keys {sorted(extra)}")
        missing = {"id", "site", "exclude", "reason"} - set(item)
        if missing:
            raise RulesError(f"{path}: rule #{i + 1} lacks {sorted(missing)}")
        exclude = item["exclude"]
        if isinstance(exclude, str) or not isinstance(exclude, list):
            raise RulesError(f"{path}: rule #{i + 1}: 'exclude' must be a list of classes")
        allow = item.get("allow_malignant", False)
        if not isinstance(allow, bool):
            raise RulesError(f"{path}: rule #{i + 1}: 'allow_malignant' must be true or false")
        rules.append(
            Rule(
                id=str(item["id"]),
                site=str(item["site"]),
                exclude=tuple(str(c) for c in exclude),
                reason=str(item["reason"]).strip(),
                allow_malignant=allow,
                evidence=str(item.get("evidence", "")).strip(),
            )
        )
    return validate_rules(rules, str(path))


def apply_rules(probs: Sequence[float] | np.ndarray, site: str, rules: Rules) -> RuleResult:
    """Remove the classes the rules exclude at ``site`` and renormalise the rest.

    Args:
        probs: one probability per class, in ``CLASSES`` order.
        site: one of ``BODY_SITES``; ``unknown`` excludes nothing.
        rules: from :func:`load_rules`.

    Returns:
        The remaining classes ranked by renormalised probability (ties in class order) and
        the exclusions in class order. If the model put (numerically) all its mass on
        excluded classes, the remaining classes share it equally: the rules disagree with
        the model and the ranking says so by being flat.

    Raises:
        ValueError: wrong number of probabilities, negative or non-finite values, or an
            unknown site.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(CLASSES),):
        raise ValueError(f"expected {len(CLASSES)} probabilities, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"probabilities must be finite and non-negative, got {p.tolist()}")
    if site not in BODY_SITES:
        raise ValueError(f"unknown body site {site!r}; use one of {BODY_SITES}")
    excluded: dict[str, Exclusion] = {}
    for rule in rules.for_site(site):
        for cls in rule.exclude:
            if cls in MALIGNANT and not rule.allow_malignant:  # a Rules built by hand
                raise ValueError(f"rule {rule.id!r} excludes malignant {cls!r} without allow")
            excluded.setdefault(
                cls, Exclusion(cls, rule.id, rule.reason, float(p[CLASS_INDEX[cls]]))
            )
    keep = [i for i, c in enumerate(CLASSES) if c not in excluded]
    kept = p[keep]
    total = kept.sum()
    kept = kept / total if total > 1e-12 else np.full(len(keep), 1.0 / len(keep))
    order = sorted(range(len(keep)), key=lambda j: (-kept[j], keep[j]))
    ranking = [(CLASSES[keep[j]], float(kept[j])) for j in order]
    return RuleResult(ranking, sorted(excluded.values(), key=lambda e: CLASS_INDEX[e.cls]))
