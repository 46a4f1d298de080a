"""Image preprocessing: expected values are derived by hand from the reference's rules (REFERENCE.md);
the end-to-end pipeline tests check the same code against recorded reference frames."""

import numpy as np
import PIL.Image
import pytest
import torch

from i2vgen.preprocess import center_crop_wide, clip_pixel_values, to_pil_images, vae_pixel_values

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def blocks_image(blocks: np.ndarray, factor: int) -> PIL.Image.Image:
    """An RGB image made of factor x factor blocks of constant colour, so a BOX shrink by `factor` is exact."""
    return PIL.Image.fromarray(np.kron(blocks, np.ones((factor, factor, 1))).astype(np.uint8))


def test_center_crop_wide_box_resize_then_centre_crop():
    # 8x4 blocks of 2x2 pixels = a 16x8 image; target (4, 4): scale = min(16/4, 8/4) = 2 -> an 8x4 image
    # equal to the block grid, then the centre 4x4: columns 2..5.
    blocks = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3) * 2
    out = center_crop_wide(blocks_image(blocks, 2), (4, 4))
    assert out.size == (4, 4)
    np.testing.assert_array_equal(np.asarray(out), blocks[:, 2:6])


def test_center_crop_wide_floor_divides_the_scale():
    # 100x50 to (30, 30): scale = 50/30 = 1.6666666666666667 (rounded up), so 50 // scale = 29, not 30:
    # the resized image is 59x29 and the crop box starts at y = -1, one row above the image (black).
    image = PIL.Image.new("RGB", (100, 50), (200, 100, 50))
    out = np.asarray(center_crop_wide(image, (30, 30)))
    assert out.shape == (30, 30, 3)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1:], np.broadcast_to([200, 100, 50], (29, 30, 3)))


def test_to_pil_images_converts_modes_and_arrays():
    rgba = PIL.Image.new("RGBA", (5, 4), (10, 20, 30, 40))
    gray = PIL.Image.new("L", (5, 4), 77)
    out = to_pil_images([rgba, gray])
    assert [im.mode for im in out] == ["RGB", "RGB"]
    assert out[0].getpixel((0, 0)) == (10, 20, 30) and out[1].getpixel((0, 0)) == (77, 77, 77)

    # float tensors and arrays in [0, 1] -> x * 255 rounded half to even: 0.5 * 255 = 127.5 -> 128
    tensor = torch.full((2, 3, 4, 5), 0.5)
    assert [im.size for im in to_pil_images(tensor)] == [(5, 4), (5, 4)]
    assert to_pil_images(tensor)[0].getpixel((0, 0)) == (128, 128, 128)
    array = np.full((4, 5, 3), 1 / 255, dtype=np.float32)
    assert to_pil_images(array)[0].getpixel((0, 0)) == (1, 1, 1)
    assert to_pil_images(torch.full((1, 4, 5), 1.0))[0].getpixel((0, 0)) == (255, 255, 255)  # grayscale tensor


@pytest.mark.parametrize("bad, error", [
    ("image.png", TypeError), ([], ValueError), (torch.full((3, 4, 4), -0.5), ValueError),
    (np.zeros((4, 4)), ValueError),
])
def test_to_pil_images_rejects(bad, error):
    with pytest.raises(error):
        to_pil_images(bad)


def test_clip_pixel_values_crop_resize_normalise():
    image = PIL.Image.new("RGB", (40, 24), (51, 102, 204))
    out = clip_pixel_values([image, image], 16, (8, 12), CLIP_MEAN, CLIP_STD)
    assert out.shape == (2, 3, 8, 12) and out.dtype == torch.float32
    expected = (torch.tensor([51, 102, 204]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    # Float32 rounding of (x/255 - mean)/std computed in another order: a few ulps.
    torch.testing.assert_close(out[:, :, 0, 0], expected.expand(2, 3), rtol=1e-6, atol=1e-6)
    assert torch.all(out == out[:, :, :1, :1])  # a constant image stays constant


def test_vae_pixel_values_range_and_size():
    halves = np.concatenate([np.zeros((16, 8, 3)), np.full((16, 8, 3), 255)], axis=1)  # black | white
    image = PIL.Image.fromarray(halves.astype(np.uint8))
    out = vae_pixel_values([image], 16, 8)  # (width, height) = (16, 8): scale 1, centre rows 4..11
    assert out.shape == (1, 3, 8, 16)
    assert torch.all(out[..., :8] == -1) and torch.all(out[..., 8:] == 1)
