"""Encoding speed: our evaluator's `encode` against `SentenceTransformer.encode`, same model and sentences.

    python bench/encode.py [--sentences N] [--batch-size 128] [--repeats 3]

Sentences: the STS-B test sentences (both sides, 2 x 1379, duplicates included as an evaluation sees them).
Both sides use CLS-free, pooling-equivalent work: we time `encode(..., pooling="mean")` and
SentenceTransformer's default (mean pooling + normalisation) on the same MiniLM folder, same batch size, same
threads. Reported: sentences/second of each (median over repeats) and the ratio ours / theirs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=None, help="use the first N sentences only")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from jtcse_lib.backbones import load_backbone, minilm_dir
    from jtcse_lib.data import load_stsb
    from jtcse_lib.evaluate import encode

    pairs = load_stsb("test")
    sentences = (pairs.sent1 + pairs.sent2)[: args.sentences]
    model, tokenizer = load_backbone("minilm")
    model.eval()
    st = SentenceTransformer(str(minilm_dir()), device="cpu")

    ours = encode(model, tokenizer, sentences, pooling="mean", batch_size=args.batch_size, progress=False)
    theirs = st.encode(sentences, batch_size=args.batch_size, convert_to_numpy=True)
    ours_n = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    agree = float(np.abs(ours_n - theirs).max())

    t_ours = timed(lambda: encode(model, tokenizer, sentences, pooling="mean", batch_size=args.batch_size,
                                  progress=False), args.repeats)
    t_st = timed(lambda: st.encode(sentences, batch_size=args.batch_size, show_progress_bar=False),
                 args.repeats)
    n = len(sentences)
    print(f"sentences: {n} (STS-B test, {len(set(sentences))} distinct), batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"max |ours - sentence-transformers| after normalisation: {agree:.2e}")
    print(f"{'encoder':<28}{'seconds':>10}{'sent/s':>10}")
    print(f"{'jtcse_lib.evaluate.encode':<28}{t_ours:>10.2f}{n / t_ours:>10.1f}")
    print(f"{'SentenceTransformer.encode':<28}{t_st:>10.2f}{n / t_st:>10.1f}")
    print(f"speed ratio ours / sentence-transformers: {t_st / t_ours:.2f}x")


if __name__ == "__main__":
    main()
