"""Does the memory of training on a clip folder grow with the number of clips? (issue 21, docs/training.md)

    python scripts/data_memory.py --data runs/demo-clips --cache runs/tiny-demo-lora-clips/cache --clips 38
    python scripts/data_memory.py --data runs/demo-clips --cache runs/tiny-demo-lora-clips/cache --clips 384

Builds the ClipDataset of the first --clips clips of the folder (encoding what the cache lacks), reads
--items samples through a DataLoader with --workers workers, and prints the peak resident memory of this
process and of its workers (ru_maxrss), and the cache's size on disk. Run once per size, in fresh processes.
"""

import argparse
import csv
import json
import resource
import shutil
import tempfile
from pathlib import Path

import torch

from i2vgen.training.config import TrainConfig
from i2vgen.training.dataset import folder_batches, folder_dataset
from i2vgen.training.train import load_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    rows = list(csv.DictReader(open(args.data / "metadata.csv")))[: args.clips]
    subset = work / "data"
    subset.mkdir()
    for row in rows:
        (subset / row["file_name"]).symlink_to((args.data / row["file_name"]).resolve())
    with open(subset / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    cfg = TrainConfig(model=args.model, output_dir=str(work), data_dir=str(subset), cache_dir=str(args.cache),
                      sample_fps=(8, 12, 16, 24), batch_size=8, max_steps=args.items // 8)
    dataset = folder_dataset(load_pipeline(cfg), cfg, work)
    after_index = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = folder_batches(dataset, 0, args.workers)
    for _ in range(args.items // 8):
        next(batches)
    del batches
    report = {"clips": len(dataset.by_bucket[0]), "items_read": args.items,
              "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_main_after_index_mb": after_index / 1024,
              "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
              "cache_mb_on_disk": sum(p.stat().st_size for p in args.cache.iterdir()) / 2**20}
    print(json.dumps(report, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
