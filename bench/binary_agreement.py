"""How often binary vectors (`encoding_format: ubinary`) find the same top passage as the float vectors.

Query/passage pairs come from the Python standard library's own docstrings, real English text that ships
with every Python: the query is a docstring's first sentence, the passage the rest of it. Every query is
searched among all passages twice, by cosine of the float vectors and by Hamming distance of the packed
sign bits the service returns, and the script prints how often the two top-1 passages agree, and how often
each is the query's own passage. Not a timing: the machine's load does not change it.

    .venv/bin/python bench/binary_agreement.py             # the default model (multilingual-e5-small)
    .venv/bin/python bench/binary_agreement.py --pairs 300 --model e5-small-v2
"""

from __future__ import annotations

import argparse
import base64
import importlib
import inspect
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from e5 import EmbeddingRequest, load_service  # noqa: E402

MODULES = ("collections", "json", "os", "pathlib", "re", "shutil", "statistics", "string", "textwrap", "typing",
           "argparse", "asyncio", "csv", "datetime", "email", "fractions", "functools", "gzip", "heapq", "http",
           "inspect", "itertools", "logging", "math", "pickle", "random", "socket", "sqlite3", "subprocess",
           "tarfile", "tempfile", "threading", "unittest", "urllib", "uuid", "xml", "zipfile", "decimal", "difflib",
           "calendar", "configparser", "contextlib", "dataclasses", "enum", "hashlib", "ipaddress", "locale")


def docstring_pairs(count: int) -> list[tuple[str, str]]:
    """Up to `count` (first sentence, rest) pairs from stdlib docstrings, deterministic and deduplicated."""
    pairs, seen = [], set()
    warnings.simplefilter("ignore")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        members = [module] + [obj for _, obj in sorted(inspect.getmembers(module), key=lambda m: m[0])
                              if inspect.isfunction(obj) or inspect.isclass(obj)]
        if hasattr(module, "__path__"):
            for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name)[:5]:
                try:
                    members.append(importlib.import_module(f"{name}.{info.name}"))
                except Exception:  # noqa: BLE001 - an optional submodule that does not import here
                    continue
        for obj in members:
            doc = " ".join((inspect.getdoc(obj) or "").split())
            first, _, rest = doc.partition(". ")
            if len(first.split()) < 5 or len(rest.split()) < 12 or first in seen:
                continue
            seen.add(first)
            pairs.append((first.rstrip("."), re.sub(r"\s+", " ", rest)[:1500]))
            if len(pairs) == count:
                return pairs
    return pairs


def unpacked(texts: list[str]) -> np.ndarray:
    return np.unpackbits(np.stack([np.frombuffer(base64.b64decode(t), np.uint8) for t in texts]), axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--model", help="registry name (default: E5_MODEL or multilingual-e5-small)")
    parser.add_argument("--out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    pairs = docstring_pairs(args.pairs)
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    service = load_service(args.model)

    def embed(texts: list[str], input_type: str, encoding: str) -> dict:
        return vars(service.handle(EmbeddingRequest(texts=texts, input_type=input_type, encoding_format=encoding,
                                                    normalize=True)))

    q_float = embed(queries, "query", "float")["embeddings"]
    p_float = embed(passages, "passage", "float")["embeddings"]
    q_bits = unpacked(embed(queries, "query", "ubinary")["embeddings_base64"])
    p_bits = unpacked(embed(passages, "passage", "ubinary")["embeddings_base64"])
    by_cosine = (q_float @ p_float.T).argmax(1)
    hamming = (q_bits[:, None, :] != p_bits[None, :, :]).sum(2)
    by_hamming = hamming.argmin(1)  # ties: the first passage, as the cosine's argmax
    truth = np.arange(len(pairs))
    report = {
        "model": service.model_name, "pairs": len(pairs), "dimensions": int(q_float.shape[1]),
        "top1_agreement": float((by_cosine == by_hamming).mean()),
        "cosine_top1_correct": float((by_cosine == truth).mean()),
        "hamming_top1_correct": float((by_hamming == truth).mean()),
    }
    # Binary search as a first stage: how often the cosine top-1 is among Hamming's top k, to rescore in float.
    ranks = np.argsort(hamming, axis=1, kind="stable")
    for k in (10, 30):
        report[f"hamming_top{k}_holds_cosine_top1"] = float(np.mean([by_cosine[i] in ranks[i, :k]
                                                                     for i in range(len(pairs))]))
    print(f"{report['model']}, {report['pairs']} query/passage pairs from stdlib docstrings, "
          f"{report['dimensions']} dimensions ({report['dimensions'] // 8} bytes binary):")
    print(f"  top-1 by Hamming = top-1 by cosine: {report['top1_agreement']:.1%}")
    print(f"  top-1 is the query's own passage: cosine {report['cosine_top1_correct']:.1%}, "
          f"Hamming {report['hamming_top1_correct']:.1%}")
    print(f"  the cosine top-1 is within Hamming's top 10: {report['hamming_top10_holds_cosine_top1']:.1%}, "
          f"top 30: {report['hamming_top30_holds_cosine_top1']:.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
