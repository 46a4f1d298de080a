"""A small CLIP tokenizer written from scratch: whole-word tokens for a given word list.

CLIP's tokenizer is byte-level BPE: a word is split into characters (the last one marked "</w>"), then pairs
are merged in the order merges.txt lists them. We keep the full byte alphabet, so any text still tokenizes,
and add merge rules until each word of our vocabulary is one token. For the demo that means every colour,
shape and direction gets its own token, so the text embeddings of different captions differ where it counts.
The files (vocab.json, merges.txt, tokenizer_config.json) load as `CLIPTokenizer` in transformers 4.x and 5.x.
"""

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_alphabet() -> list[str]:
    """CLIP's byte-level alphabet: one printable character per byte value (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [table[b] for b in range(256)]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges to one word the way CLIP's BPE does: repeatedly merge the lowest-ranked adjacent pair."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merge rules that turn every word in `words` into a single token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # A word may be split by earlier rules in a different way than its own left-to-right chain; keep
        # adding the merge of its first two pieces until it is whole.
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
    return merges


def write_clip_tokenizer(folder, words: list[str], model_max_length: int) -> int:
    """Write the tokenizer files to `folder`; returns the vocabulary size (BOS and EOS are the last two ids)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    merges = word_merges(sorted(set(words)))
    merged = [a + b for a, b in merges]
    vocab = chars + [c + "</w>" for c in chars] + [t for t in dict.fromkeys(merged) if t not in chars] + [BOS, EOS]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return len(vocab)
