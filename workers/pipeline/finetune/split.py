"""The held-out split: which samples train and which measure the validation accuracy.

Either stratified and seeded (:func:`stratified_split`), or the user's own (:func:`column_split`,
a ``split`` column of the manifest). Either way no validation sample has the content of a
training sample: identical samples (equal digests) stay on one side, so a duplicated image or
text cannot be learnt and then "recognised" as a held-out one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune.recipe import check_validation

#: what a ``split`` column may say, and which side each word puts its row on
SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
               "validation": "validation"}  # fmt: skip


@dataclass(frozen=True)
class Split:
    """Row indices (sorted, disjoint) of the training and the validation samples.

    ``describe``: how it was made, for the report; ``dropped``: validation rows of the user's
    split left out because a training row holds the same content.
    """

    train: np.ndarray
    validation: np.ndarray
    describe: str
    dropped: int = 0


def _groups(digests: Sequence[bytes]) -> np.ndarray:
    """``(N,)`` group ids: equal digests, equal id (numbered in order of first appearance)."""
    first: dict[bytes, int] = {}
    return np.asarray([first.setdefault(d, len(first)) for d in digests], dtype=np.int64)


def stratified_split(
    labels: np.ndarray, digests: Sequence[bytes], validation: float | int, seed: int
) -> Split:
    """Hold out ``validation`` of each class (a fraction, or a count per class), seeded.

    ``labels``: ``(N,)`` class labels; ``digests``: ``N`` content digests. Samples of equal
    content form one group, drawn whole, into the side of the class of its first sample. The
    same labels, digests, size and seed give the same split.
    """
    check_validation(validation)
    groups = _groups(digests)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    first_row = np.full(n_groups, -1, dtype=np.int64)
    for row in range(len(groups) - 1, -1, -1):
        first_row[groups[row]] = row
    group_labels = labels[first_row]
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(group_labels).tolist():
        members = np.flatnonzero(group_labels == label)
        if len(members) < 2:
            raise PipelineError(
                f"class {label!r} has {len(members)} distinct sample: a held-out split needs at "
                "least 2 per class (one to train on, one to validate); add samples of it, or "
                "give your own split in a 'split' column"
            )
        if isinstance(validation, int):
            if validation >= len(members):
                raise PipelineError(
                    f"class {label!r} has {len(members)} distinct samples: holding out "
                    f"{validation} per class leaves none to train on; give a smaller count or a "
                    "fraction such as 0.2"
                )
            count = validation
        else:
            count = min(max(1, round(validation * len(members))), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    is_validation = np.isin(groups, np.concatenate(held))
    size = f"{validation:g} of each class" if isinstance(validation, float) else (
        f"{validation} per class")  # fmt: skip
    return Split(
        train=np.flatnonzero(~is_validation),
        validation=np.flatnonzero(is_validation),
        describe=f"stratified, {size}, seed {seed}",
    )


def column_split(
    values: Sequence[object], digests: Sequence[bytes], where: str, first: int = 1
) -> Split:
    """The user's split: each row's ``split`` cell (train, or val/validation). A validation
    row whose content is also a training row's is left out (``Split.dropped``). ``first``:
    the file line of the first row (2 in a CSV, after its header), so a row is named by its
    line as the dataset's reader names it."""
    sides: list[str] = []
    for row, value in enumerate(values):
        side = SPLIT_WORDS.get(str(value).strip().lower()) if value is not None else None
        if side is None:
            raise PipelineError(
                f"{where}: row {first + row} has split {value!r}; write train or validation (val)"
            )
        sides.append(side)
    marks = np.asarray(sides)
    train = np.flatnonzero(marks == "train")
    validation = np.flatnonzero(marks == "validation")
    seen = {digests[i] for i in train.tolist()}
    kept = np.asarray([i for i in validation.tolist() if digests[i] not in seen], dtype=np.int64)
    if len(train) == 0 or len(kept) == 0:
        raise PipelineError(
            f"{where}: the split column leaves {len(train)} training and {len(kept)} distinct "
            "validation rows; both need at least one"
        )
    return Split(train, kept, f"the split column of {where}", dropped=len(validation) - len(kept))
