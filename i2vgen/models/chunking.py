"""Memory control of the UNet: run a layer over slices of its rows and concatenate, so that its intermediate
tensors exist for one slice at a time.

Exact when the layer treats its rows independently, which the UNet's per-frame layers do over frames (resnets,
spatial transformers: norms and attention stay inside a frame) and its temporal transformer blocks do over
pixels (attention runs along each pixel's frames). The largest intermediates of one layer (the GEGLU hidden
state, the attention's queries, keys and values, a resnet's normalised input) then shrink with the slice;
what stays full size is the layer's input and output.

`I2VGenXLUNet.enable_forward_chunking(chunk_size)` sets `forward_chunk_size` (frames per slice) on every layer
that reads it; `None` (the default) runs each layer in one call.
"""

import torch


def chunked(fn, x: torch.Tensor, *args, size: int | None) -> torch.Tensor:
    """fn(x, *args), computed on `size` rows (dim 0) of x at a time and concatenated along dim 0.

    An argument with as many rows as x is sliced with it (a per-frame timestep embedding). One with fewer rows
    holds one row per group of len(x) // len(arg) consecutive rows of x (a video's context for its frames): each
    slice gets the rows of the groups it covers, so `size` must divide the group or be a multiple of it.
    """
    rows = x.shape[0]
    if size is None or size >= rows:
        return fn(x, *args)
    parts = []
    for start in range(0, rows, size):
        stop = min(start + size, rows)
        parts.append(fn(x[start:stop], *(_rows_of(arg, rows, start, stop) for arg in args)))
    return torch.cat(parts)


def _rows_of(arg, rows: int, start: int, stop: int):
    """The rows of `arg` that belong to rows [start, stop) of a tensor of `rows` rows (see `chunked`)."""
    if not isinstance(arg, torch.Tensor) or arg.ndim == 0:
        return arg
    group = rows // arg.shape[0]
    if group * arg.shape[0] != rows or (stop - start) % group and group % (stop - start):
        raise ValueError(f"cannot slice rows [{start}, {stop}) of {rows} for an argument of {arg.shape[0]} rows")
    return arg[start // group: -(-stop // group)]


def frames_per_chunk(size: int | None, num_frames: int) -> int | None:
    """Rows per slice for a per-frame layer: `size` frames, reduced to a divisor of num_frames so that a slice
    never straddles two videos (their context rows differ)."""
    if size is None:
        return None
    return max(d for d in range(1, min(size, num_frames) + 1) if num_frames % d == 0)


def pixels_per_chunk(size: int | None, rows: int, num_frames: int) -> int | None:
    """Rows per slice for a temporal layer over `rows` pixel sequences of num_frames frames: as many tokens per
    slice as `size` frames of a per-frame layer hold, i.e. a num_frames / size share of the rows."""
    if size is None:
        return None
    return -(-rows * min(size, num_frames) // num_frames)
