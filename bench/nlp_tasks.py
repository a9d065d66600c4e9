"""Text tasks on this machine: extraction throughput of the zoo's text models on plain texts,
text pairs and token classification, from the same fortunes.

- plain: ``--n`` fortunes (computers, then science), one sample each;
- pairs: the same fortunes, each paired with the next (the tokenizer's pair encoding);
- tokens: the same fortunes split into words (at most 64 each), one sample per word, tags by
  rule (``tests/nlp_data.py``): every sentence runs once and each word's features are the
  mean of its subword vectors.

Each cell is the best of ``--repeats`` cold extractions (no cache), after one warm-up.

    python bench/nlp_tasks.py [--n 400] [--repeats 3]

Prints a table; writes bench/results/nlp_tasks.json (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_of, machine, write_report

from tests.nlp_data import _WORD, fortune_texts, rule_tags, write_jsonl
from workers.pipeline.datasets import open_dataset
from workers.pipeline.extraction import extract
from workers.pipeline.models.zoo import load_model, zoo_names

RESULTS = Path(__file__).resolve().parent / "results"


def _files(n: int, folder: Path) -> dict[str, Path]:
    texts = fortune_texts("computers", n) + fortune_texts("science", n)
    texts = texts[:n]
    labels = ["computers" if i < len(texts) // 2 else "science" for i in range(len(texts))]
    plain = [{"text": t, "label": label} for t, label in zip(texts, labels, strict=True)]
    pairs = [
        {"text": t, "text_pair": texts[(i + 1) % len(texts)], "label": labels[i]}
        for i, t in enumerate(texts)
    ]
    sentences = []
    for text in texts:
        words = _WORD.findall(text)[:64]
        sentences.append({"tokens": words, "tags": rule_tags(words)})
    return {
        "plain": write_jsonl(folder / "plain.jsonl", plain),  # type: ignore[arg-type]
        "pairs": write_jsonl(folder / "pairs.jsonl", pairs),  # type: ignore[arg-type]
        "tokens": write_jsonl(folder / "tokens.jsonl", sentences),  # type: ignore[arg-type]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="fortunes (sentences) per task")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(args.n, Path(tmp))
        datasets = {kind: open_dataset(str(path)) for kind, path in files.items()}
        for name in zoo_names("text"):
            model = load_model(name)
            for kind, dataset in datasets.items():
                seconds = best_of(lambda m=model, d=dataset: extract([m], d), args.repeats, True)
                rows.append(
                    {
                        "model": name,
                        "runtime": model.runtime,
                        "task": kind,
                        "sentences": args.n,
                        "samples": len(dataset),
                        "seconds": round(seconds, 3),
                        "sentences_per_s": round(args.n / seconds, 1),
                        "samples_per_s": round(len(dataset) / seconds, 1),
                    }
                )
    print(
        f"{'model':<14} {'task':<7} {'samples':>8} {'seconds':>8} {'sent/s':>8} {'samples/s':>10}"
    )
    for row in rows:
        print(
            f"{row['model']:<14} {row['task']:<7} {row['samples']:>8} {row['seconds']:>8.2f} "
            f"{row['sentences_per_s']:>8.1f} {row['samples_per_s']:>10.1f}"
        )
    write_report(RESULTS / "nlp_tasks.json", {"machine": machine(), "n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
