"""Training the I2VGen-XL UNet (train.py), synthetic motion data (data.py) and the tiny demo model (demo.py)."""
