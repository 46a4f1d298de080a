"""Memory control of the UNet, all of it: run a layer on slices of its rows, so the layer's intermediate tensors
exist for one slice at a time. Two uses, one file:

1. Feed-forwards, always (`feed_forward_rows`): the GEGLU hidden state, 8x the tokens' width, is the UNet's
   largest tensor (in transformer_in); it is computed in at most MAX_FF_CHUNKS row chunks of at least
   MIN_FF_CHUNK_ELEMENTS. Not a switch: rows are independent, so it costs nothing but a few kernel launches, and
   on the small test models it never splits.
2. Forward chunking, the switch (`I2VGenXLUNet.enable_forward_chunking`): whole layers on slices of frames.

Exact when the layer treats rows independently: the per-frame layers (resnets, spatial transformers, up/down
samplers; their norms and attention stay inside a frame) over frames, and the temporal transformer blocks over
pixels (attention runs along each pixel's frames; their GroupNorm, which spans all frames, runs before). What
stays full size is each layer's input and output; what shrinks is everything in between (a resnet's normalised
input, the attention's queries, keys and values, the GEGLU hidden state).

`I2VGenXLUNet.enable_forward_chunking(chunk_size)` sets `forward_chunk_size` on every `Chunkable` layer; None (the
default) runs each layer in one call. Slices are never smaller than MIN_CHUNK_ELEMENTS, so the small, deep levels
of the UNet still run in one call, where slicing would only add kernel launches.
"""

import math

import torch

MIN_CHUNK_ELEMENTS = 2 ** 22  # elements of a slice's input: 1 frame at the released model's first level (4.5 M)
MAX_FF_CHUNKS, MIN_FF_CHUNK_ELEMENTS = 8, 2 ** 21  # feed-forward hidden state: at most 8 chunks, >= 2 M elements


def feed_forward_rows(mlp, x: torch.Tensor, hidden_width: int) -> torch.Tensor:
    """mlp(x) for a position-wise MLP whose hidden layer is `hidden_width` wide, on row chunks of x (dim 0)."""
    hidden = x.shape[:-1].numel() * hidden_width
    chunks = min(MAX_FF_CHUNKS, math.ceil(hidden / MIN_FF_CHUNK_ELEMENTS))
    return mlp(x) if chunks == 1 else torch.cat([mlp(part) for part in x.chunk(chunks)])


class Chunkable:
    """A layer that runs its per-frame parts `forward_chunk_size` frames at a time when it is set."""

    forward_chunk_size: int | None = None

    def _per_frame(self, layer, x: torch.Tensor, *args, num_frames: int, row_elements: int | None = None
                   ) -> torch.Tensor:
        return per_frame(layer, x, *args, chunk=self.forward_chunk_size, num_frames=num_frames,
                         row_elements=row_elements)


def set_forward_chunking(model: torch.nn.Module, chunk_size: int | None):
    for module in model.modules():
        if isinstance(module, Chunkable):
            module.forward_chunk_size = chunk_size


def per_frame(fn, x: torch.Tensor, *args, chunk: int | None, num_frames: int, row_elements: int | None = None
              ) -> torch.Tensor:
    """fn(x, *args) for a per-frame layer, x ((b f), ...), run `chunk` frames of one video at a time (at least
    MIN_CHUNK_ELEMENTS of the layer's input, whose rows have `row_elements` elements, x's by default, and a
    divisor of num_frames so that no slice straddles two videos). An argument with a row per frame is sliced
    with x (the timestep embedding, a skip connection); one with a row per video gives the slice its video's
    row (the context)."""
    if chunk is None:
        return fn(x, *args)
    frames = max(chunk, math.ceil(MIN_CHUNK_ELEMENTS / (row_elements or x[0].numel())))
    frames = max(d for d in range(1, min(frames, num_frames) + 1) if num_frames % d == 0)
    return fn(x, *args) if frames == num_frames else chunked(fn, x, *args, size=frames)


def per_pixel(fn, h: torch.Tensor, chunk: int | None, num_frames: int) -> torch.Tensor:
    """fn(h) for a temporal layer, h ((b h w), f, c): one pixel's frames per row, run on as many tokens per slice
    as `chunk` frames of a per-frame layer hold (a chunk / num_frames share of the rows), at least
    MIN_CHUNK_ELEMENTS."""
    if chunk is None:
        return fn(h)
    rows = max(math.ceil(h.shape[0] * min(chunk, num_frames) / num_frames), math.ceil(MIN_CHUNK_ELEMENTS / h[0].numel()))
    return chunked(fn, h, size=rows)


def chunked(fn, x: torch.Tensor, *args, size: int) -> torch.Tensor:
    """fn(x, *args) computed on `size` rows (dim 0) of x at a time, stacked along dim 0.

    A tensor argument with len(x) / G rows holds one row per group of G consecutive rows of x (G = 1: one per
    row); each slice gets the rows of the groups it covers. `size` must divide G or be a multiple of it."""
    rows = x.shape[0]
    if size >= rows:
        return fn(x, *args)
    out = None  # written slice by slice: concatenating a list of slices would hold the output twice
    for start in range(0, rows, size):
        stop = min(start + size, rows)
        part = fn(x[start:stop], *(_rows_of(arg, rows, start, stop) for arg in args))
        if out is None:
            out = part.new_empty((rows, *part.shape[1:]))
        out[start:stop] = part
    return out


def _rows_of(arg, rows: int, start: int, stop: int):
    """The rows of `arg` that belong to rows [start, stop) of a tensor of `rows` rows (see `chunked`)."""
    if not isinstance(arg, torch.Tensor) or arg.ndim == 0:
        return arg
    group = rows // arg.shape[0]
    if group * arg.shape[0] != rows or ((stop - start) % group and group % (stop - start)):
        raise ValueError(f"cannot slice rows [{start}, {stop}) of {rows} for an argument of {arg.shape[0]} rows")
    return arg[start // group: math.ceil(stop / group)]
