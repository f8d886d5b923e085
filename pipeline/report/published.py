"""Published numbers (`reports/published.yaml`), shown beside ours only where the setting matches.

A number is comparable only to a run of the same dataset, network config, schedule length and
loss; anything else would compare apples with oranges, so the cell then says no number is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..study_losses import canonical

FIELDS = ("dataset", "config", "iterations", "loss", "metric", "value", "split",
          "network", "source")


class PublishedError(ValueError):
    """A published.yaml entry that is missing a field or has a wrong one."""


@dataclass(frozen=True)
class Published:
    dataset: str
    config: str
    iterations: int
    loss: list[dict]  # mmseg loss configs, as train.losses.<key>.terms
    metric: str
    value: float
    split: str
    network: str
    source: str

    def matches(self, dataset: str, config: str, iterations: int | None,
                terms: list[dict], metric: str) -> bool:
        return (self.dataset, self.config, self.iterations, self.metric) == \
            (dataset, config, iterations, metric) and canonical(self.loss) == canonical(terms)

    @property
    def note(self) -> str:
        return f"{self.source}; {self.network}; {self.split}"


def load_published(path: Path) -> list[Published]:
    path = Path(path)
    if not path.is_file():
        raise PublishedError(f"{path}: not found (report.published in params.yaml)")
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise PublishedError(f"{path}: expected a list of entries")
    published = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise PublishedError(f"{where} is not a mapping")
        unknown = sorted(set(entry) - set(FIELDS))
        missing = [f for f in FIELDS if f not in entry]
        if unknown or missing:
            raise PublishedError(f"{where}: " + "; ".join(
                ([f"unknown field '{unknown[0]}'"] if unknown else []) +
                ([f"missing field '{missing[0]}'"] if missing else [])))
        if isinstance(entry["value"], bool) or not isinstance(entry["value"], (int, float)):
            raise PublishedError(f"{where}: value {entry['value']!r} is not a number")
        loss = entry["loss"]
        if not isinstance(loss, list) or not all(isinstance(t, dict) and "type" in t
                                                 for t in loss):
            raise PublishedError(f"{where}: loss must be a list of mmseg loss configs, e.g. "
                                 f"[{{type: CrossEntropyLoss}}], got {loss!r}")
        published.append(Published(**entry))
    return published


def find(published: list[Published], dataset: str, config: str, iterations: int | None,
         terms: list[dict], metric: str) -> Published | None:
    return next((p for p in published
                 if p.matches(dataset, config, iterations, terms, metric)), None)
