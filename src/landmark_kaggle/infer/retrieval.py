"""Retrieval for ``predict``: index folders loaded once, assembled into one device-resident index, and scored.

An index is an embeddings store written by ``embed-index`` (``embed_index.py``)
plus ``landmark_ids.npy`` (-1: a non-landmark row), ``index.json`` and, when
it was built with ``--nonlandmarks``, ``nonlandmark_sim.npy``: float32 [N], B
of the GLR2020 1st-place rule, each row's mean top-5 similarity to that
non-landmark index (NaN for a row that could not be read).

``Retrieval`` puts together what ``predict`` searches: the bundled index, the
competition's own train set embedded at predict time, or both (an image id in
both counts once, from the competition); restricted to the landmarks of the
competition's ``train.csv`` when asked; placed once on the device
(``search.DeviceIndex``). ``Retrieval.score`` applies the chosen rule of
``scoring.py`` to a block of queries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from landmark_kaggle.data.embstore import open_store
from landmark_kaggle.errors import UserError
from landmark_kaggle.infer import scoring
from landmark_kaggle.infer.search import DeviceIndex, mean_top_similarity

LANDMARK_IDS = "landmark_ids.npy"
INDEX_META = "index.json"
NONLANDMARK_SIM = "nonlandmark_sim.npy"
FINITE_CHUNK = 1 << 18


class RetrievalIndex:
    """An index folder in host memory: its finite float16 rows, their landmark ids and image ids, B if stored."""

    def __init__(self, path: str | os.PathLike, label_map=None):
        import json

        store = open_store(path)
        self.path = Path(path)
        self.meta = store.meta
        info = self.path / INDEX_META
        self.info = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
        lids_path = self.path / LANDMARK_IDS
        if not lids_path.is_file():
            raise UserError(f"{self.path}: no {LANDMARK_IDS}; is this an embed-index output?")
        lids = np.load(lids_path)
        if len(lids) != len(store):
            raise UserError(f"{lids_path}: {len(lids)} landmark ids for {len(store)} rows")
        # Checked in chunks: a whole-matrix isfinite would be another 0.8 GB at GLDv2 scale.
        self.ok = np.concatenate([np.isfinite(store.matrix[s:s + FINITE_CHUNK]).all(axis=1)
                                  for s in range(0, len(store), FINITE_CHUNK)] or [np.zeros(0, bool)])
        self.dropped = int((~self.ok).sum())
        # float16, still the memory map when every row is usable: placing it on the device reads it once, and the
        # host keeps no second 1.6 GB copy at GLDv2 scale.
        self.matrix = store.matrix if not self.dropped else store.matrix[self.ok]
        self.landmark_ids, self.ids = lids[self.ok], store.ids[self.ok]
        self.probe = store.probe()
        b_path = self.path / NONLANDMARK_SIM
        self.b = np.load(b_path)[self.ok].astype(np.float32) if b_path.is_file() else None
        self.labels, self.unknown = labels_for(self.landmark_ids, label_map)

    def __len__(self) -> int:
        return len(self.matrix)


def labels_for(landmark_ids: np.ndarray, label_map) -> tuple[np.ndarray, int]:
    """Model labels of landmark ids (-1 where the model has no such class) and how many landmark rows got -1."""
    if label_map is None:
        return np.full(len(landmark_ids), -1, np.int64), 0
    known = label_map["landmark_id"].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(known, landmark_ids), max(len(known) - 1, 0))
    hit = (known[pos] == landmark_ids) if len(known) else np.zeros(len(landmark_ids), bool)
    labels = np.where(hit, label_map["label"].to_numpy(np.int64)[pos], -1)
    # Rows of landmarks the model does not know cannot vote for a class it can output.
    return labels, int(((labels < 0) & (landmark_ids >= 0)).sum())


def load_checked(path, embedder, label_map=None) -> RetrievalIndex:
    """An index folder, refused unless the models of ``embedder`` (same order) made it."""
    index = RetrievalIndex(path, label_map)
    embedder.check_index(index.path, {**index.meta, **index.info}, index.probe)
    return index


# The rules that can answer with a landmark the model has no class for: glr2020_1st never reads the classifier,
# glr2020_3rd gives such a landmark the published 1e-8 in place of a cos θ. ``linear`` scores cos θ: it cannot.
KEEP_UNKNOWN = ("glr2020_1st", "glr2020_3rd")


def extended_labels(landmark_ids: np.ndarray, label_map) -> tuple[np.ndarray, np.ndarray]:
    """Labels for rows of ``landmark_ids``, the model's classes extended by the landmarks it lacks.

    Returns (labels, every landmark id by label): a known landmark gets its model label 0..C-1, an unknown
    one C + its rank among the unknown ones, a non-landmark -1.
    """
    known = label_map["landmark_id"].to_numpy(np.int64)
    labels, _ = labels_for(landmark_ids, label_map)
    extra = np.unique(landmark_ids[(labels < 0) & (landmark_ids >= 0)])
    missing = (labels < 0) & (landmark_ids >= 0)
    labels = labels.copy()
    labels[missing] = len(known) + np.searchsorted(extra, landmark_ids[missing])
    return labels, np.concatenate([known, extra])


class Retrieval:
    """One assembled index (rows, labels, B) and the non-landmark rows, resident on the device.

    ``parts`` in priority order, last wins on a shared image id (bundle, then
    competition); ``allowed`` restricts predictions to those landmark ids;
    ``own_b`` names parts whose B may be computed here (the competition's rows,
    embedded this run); any other part must bring B from ``embed-index --nonlandmarks``.

    ``landmark_ids[label]`` is the landmark a predicted label stands for: the
    model's classes, then (glr2020_1st, glr2020_3rd) the index's landmarks the
    model has no class for, which those rules can still predict. Under
    ``linear`` such rows are left out of the index (counted in
    ``index_rows_unknown`` and ``index_rows_dropped``): they could only take
    neighbour slots.
    """

    def __init__(self, label_map, inference, parts: list[RetrievalIndex],
                 distractors: RetrievalIndex | None = None, allowed: np.ndarray | None = None,
                 own_b: tuple[RetrievalIndex, ...] = ()):
        self.inf = inference
        self.rule = inference.scoring
        self.label_map = label_map
        self.landmark_ids = label_map["landmark_id"].to_numpy(np.int64)
        self.allowed_classes = None
        if allowed is not None:
            self.allowed_classes = np.isin(self.landmark_ids, allowed)
            if not self.allowed_classes.any() and self.rule not in KEEP_UNKNOWN:
                raise UserError(f"none of the {len(allowed)} landmarks of the competition's train.csv is among the "
                                f"model's {len(label_map)} classes: nothing could be predicted")
        self.counts = {"index_rows": 0, "index_rows_dropped": sum(p.dropped for p in parts),
                       "index_rows_unknown": 0, "index_rows_duplicate": 0, "index_rows_restricted": 0,
                       "distractor_rows": len(distractors) if distractors is not None else 0}
        self.dis = DeviceIndex(distractors.matrix) if distractors is not None and len(distractors) else None
        if self.rule != "linear" and not parts:
            raise UserError(f"inference.scoring={self.rule} needs a retrieval index: --index INDEX (embed-index), "
                            "or inference.index_from=competition|both with the competition folder")
        if self.rule == "glr2020_1st" and self.dis is None:
            raise UserError("inference.scoring=glr2020_1st needs the non-landmark index for C: --distractors DIR "
                            "(embed-index --model … --images NONLANDMARK_IMAGES --out DIR)")
        self.index, self.labels, self.b = None, None, None
        if parts:
            self._assemble(parts, distractors, allowed, own_b)

    def _assemble(self, parts, distractors, allowed, own_b) -> None:
        later: set[str] = set()
        keep = []
        for part in reversed(parts):
            mask = ~np.isin(part.ids, list(later)) if later else np.ones(len(part), bool)
            self.counts["index_rows_duplicate"] += int((~mask).sum())
            if allowed is not None:
                ok = np.isin(part.landmark_ids, allowed) | (part.landmark_ids < 0)
                self.counts["index_rows_restricted"] += int((mask & ~ok).sum())
                mask &= ok
            later.update(part.ids.tolist())
            keep.append(mask)
        keep.reverse()
        lids = np.concatenate([p.landmark_ids[m] for p, m in zip(parts, keep, strict=True)])
        labels, by_label = extended_labels(lids, self.label_map)
        unknown = labels >= len(self.label_map)
        self.counts["index_rows_unknown"] = int(unknown.sum())
        if self.rule in KEEP_UNKNOWN:
            self.landmark_ids = by_label
            rows = np.ones(len(labels), bool)
        else:
            self.counts["index_rows_dropped"] += int(unknown.sum())
            rows = ~unknown
        b = None
        if self.rule == "glr2020_1st":
            for part in parts:
                self._check_b(part, distractors, part in own_b)
            b = np.concatenate([p.b[m] for p, m in zip(parts, keep, strict=True)])[rows]
        # Which of the kept rows each part gives, in the assembled order: the mask over a part's own rows.
        starts = np.cumsum([0] + [int(m.sum()) for m in keep])
        pieces = []
        for p, m, a, z in zip(parts, keep, starts[:-1], starts[1:], strict=True):
            mine = m.copy()
            mine[m] = rows[a:z]
            pieces.append(p.matrix if mine.all() else p.matrix[mine])
        matrix = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if not len(matrix):
            raise UserError("the retrieval index is empty after restriction to the competition's landmarks")
        self.labels = labels[rows]
        if b is not None:
            # A non-landmark row could only take one of the k slots and vote for nothing: +inf keeps it out.
            self.b = np.where(self.labels < 0, np.inf, b).astype(np.float32)
        self.index = DeviceIndex(matrix, penalty=self.b)
        self.counts["index_rows"] = len(self.index)

    def _check_b(self, part: RetrievalIndex, distractors: RetrievalIndex, computable: bool) -> None:
        """B must exist and come from the non-landmarks that give C, or be computed now for the run's own rows."""
        if part.b is None and computable:
            part.b = mean_top_similarity(part.matrix, self.dis, scoring.FIRST_B_TOP).astype(np.float32)
            return
        if part.b is None:
            raise UserError(f"{part.path}: no {NONLANDMARK_SIM} (B of the GLR2020 1st-place rule); build it with "
                            f"embed-index --model … --data … --out {part.path} --nonlandmarks {distractors.path}")
        made_from = part.info.get("nonlandmarks", {}).get("ids_sha256")
        if made_from != distractors.meta.get("ids_sha256"):
            raise UserError(f"{part.path}/{NONLANDMARK_SIM} was computed against other non-landmarks "
                            f"({part.info.get('nonlandmarks', {}).get('path')}) than --distractors {distractors.path}; "
                            "B and C must use one set: rerun embed-index with --nonlandmarks "
                            f"{distractors.path}")

    def neighbours(self) -> int:
        """Rows searched per query: ``topk_neighbours`` for linear; the published 3 (glr2020_1st) and 5
        (glr2020_3rd) unless ``inference.rule_neighbours`` says otherwise."""
        if self.rule == "linear":
            return self.inf.topk_neighbours
        published = {"glr2020_1st": scoring.FIRST_KEEP, "glr2020_3rd": scoring.THIRD_NEIGHBOURS}[self.rule]
        return self.inf.rule_neighbours or published

    def score(self, cos: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the label predicted (-1: none; look it up in ``landmark_ids``) and its confidence, under
        ``inference.scoring``.

        ``cos`` may be changed in place (restricted classes lowered): it is the caller's scratch block.
        """
        sims, labels = None, None
        if self.index is not None:
            sims, rows = self.index.search(emb, self.neighbours())
            labels = self.labels[rows]
        if self.rule == "glr2020_1st":
            c = mean_top_similarity(emb, self.dis, scoring.FIRST_C_TOP)
            return scoring.glr2020_1st(sims, labels, c)
        if self.rule == "glr2020_3rd":
            return scoring.glr2020_3rd(cos, sims, labels, self.allowed_classes,
                                       neighbours=self.neighbours())
        if self.allowed_classes is not None:
            # Out of the running (cos θ >= -1 everywhere else), in place: the block is predict's own.
            cos[:, ~self.allowed_classes] = -2.0
        label, conf = scoring.linear(cos, sims, labels, self.inf.retrieval_weight)
        if self.dis is not None:
            dsims, _ = self.dis.search(emb, self.inf.topk_neighbours)
            ref = sims.mean(axis=1) if sims is not None else cos[np.arange(len(label)), label]
            conf = conf - scoring.nonlandmark_penalty(dsims, self.inf.nonlandmark_weight, ref)
        return label, conf
