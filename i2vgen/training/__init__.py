"""Training the I2VGen-XL UNet (train.py, objective.py), on synthetic motion data (data.py) or your own clips
(video_folder.py, windows.py, buckets.py, cache.py, dataset.py), with validation (validation.py, board.py);
the tiny demo model (demo.py)."""
