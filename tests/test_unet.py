"""I2VGenXLUNet against outputs recorded from the reference (diffusers 0.35.2), CPU, float32.

Each `unet_*` case folder is the reference's `save_pretrained` output, so every test also checks that
`from_pretrained` loads it with strict key and shape matching. Shapes, configs and scalars are read from
the files, so `I2VGEN_FIXTURES=<other set>` checks other configs with the same tests.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from conftest import FIXTURES, UNET_CASES, guidance_inputs, load_unet_case, raw_inputs, rel_error

from i2vgen.models.unet import I2VGenXLUNet, UNet3DConditionOutput

pytestmark = pytest.mark.parity  # recorded reference outputs: scripts/test.sh reruns these on other kernels
CASES = UNET_CASES

# Float32 parity. We run the reference's operations in its order, and on one machine in one process our
# output equals the reference's bit for bit. The recordings come from another process (other thread
# count; the fixture script enables deterministic algorithms), which moves the reference's own output by
# up to 2.4e-6 of its scale (1 or 2 threads): rerunning the reference here gives the same error as ours.
# 1e-5 leaves headroom for other CPUs and thread counts; a wrong weight, norm, fold or head split gives
# errors of order 1e-2 or more.
REL_TOL = 1e-5


def test_fixture_cases_present():
    # The issue asks for at least two UNet configs; an empty glob must not pass silently.
    assert len(CASES) >= 2, f"expected unet_* cases under {FIXTURES}, found {CASES}"


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_forward_matches_reference(name):
    unet, io, case = load_unet_case(name)
    out = unet(io["sample"], io["timestep"], **raw_inputs(io))
    assert isinstance(out, UNet3DConditionOutput)
    assert rel_error(out.sample, io["out"]) <= REL_TOL
    # A python int timestep, broadcast to the batch as the reference does.
    out_int = unet(io["sample"], case["timestep_int"], **raw_inputs(io), return_dict=False)[0]
    assert rel_error(out_int, io["out_int"]) <= REL_TOL


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_precomputed_condition_path(name):
    """encode_condition once + forward(condition=...) is the same computation as the plain forward."""
    unet, io, _ = load_unet_case(name)
    condition = unet.encode_condition(**raw_inputs(io))
    via_condition = unet(io["sample"], io["timestep"], condition=condition).sample
    plain = unet(io["sample"], io["timestep"], **raw_inputs(io)).sample
    assert torch.equal(via_condition, plain)  # same operations on the same inputs
    assert rel_error(via_condition, io["out"]) <= REL_TOL


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_batch_items_are_independent(name):
    """Each batch item alone (condition.select) gives the reference's output for that item: the
    (b f) folds never mix videos. Batch size changes only kernel blocking, so REL_TOL holds."""
    unet, io, _ = load_unet_case(name)
    condition = unet.encode_condition(**raw_inputs(io))
    for i in range(io["sample"].shape[0]):
        item = slice(i, i + 1)
        out = unet(io["sample"][item], io["timestep"][item], condition=condition.select(item)).sample
        assert rel_error(out, io["out"][item]) <= REL_TOL


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_shared_trunk_equals_duplicated_batch(name):
    """A condition with twice the sample's batch of context (classifier-free guidance) and the image latents
    once runs the context-free trunk once and gives what the plain forward of the duplicated batch gives;
    the second group really sees its own context."""
    unet, io, _ = load_unet_case(name)
    condition = unet.encode_condition(**guidance_inputs(io))
    sample, t = io["sample"], io["timestep"]
    shared = unet(sample, t, condition=condition).sample
    duplicated = unet(torch.cat([sample] * 2), t.repeat(2), **guidance_inputs(io, image_latent_copies=2)).sample
    # Same operations on the same rows; only GEMM blocking over a different row count can move the last bits.
    assert rel_error(shared, duplicated) <= 1e-6
    assert rel_error(shared[:len(sample)], io["out"]) <= REL_TOL
    assert rel_error(shared[len(sample):], io["out"]) > 1e-3  # the other context changes the output


# Half precision: the model runs in the requested dtype (timestep and fps features cast as the reference
# casts them). Against the float32 reference: measured 9e-3 (fp16, 10-bit mantissa) and 5.4e-2 (bf16,
# 7-bit mantissa, relative rounding 4e-3 per op over ~40 layers); the bounds leave ~3x headroom. A missing
# cast fails outright with a dtype error; this test is about running, not about precision.
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-2), (torch.bfloat16, 0.15)])
@torch.no_grad()
def test_half_precision_runs(dtype, tol):
    name = CASES[0]
    unet = I2VGenXLUNet.from_pretrained(FIXTURES / name, torch_dtype=dtype)
    io = load_file(FIXTURES / name / "io.safetensors")
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in io.items()}
    out = unet(half["sample"], half["timestep"], **raw_inputs(half)).sample
    assert out.dtype == dtype
    assert rel_error(out, io["out"]) <= tol


def test_default_model_has_released_keys_and_shapes():
    """I2VGenXLUNet() is the released architecture: the reference's key names and shapes, recorded from a
    meta-device build of the reference's default constructor."""
    expected = json.loads((FIXTURES / "unet_default_keys.json").read_text())
    summary = json.loads((FIXTURES / "unet_default_summary.json").read_text())
    with torch.device("meta"):
        unet = I2VGenXLUNet()
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = [k for k in expected if ours[k] != expected[k]]
    assert not wrong, f"wrong shapes: {[(k, ours[k], expected[k]) for k in wrong[:5]]}"
    assert len(ours) == summary["num_tensors"]
    assert sum(p.numel() for p in unet.parameters()) == summary["num_parameters"]


@pytest.fixture(scope="module")
def small():
    unet, io, _ = load_unet_case(CASES[0])
    return unet, io


def test_bad_inputs_raise_clear_errors(small):
    unet, io = small
    sample, t, raw = io["sample"], io["timestep"], raw_inputs(io)
    with pytest.raises(ValueError, match="5-D"):
        unet(sample[:, :, 0], t, **raw)
    with pytest.raises(ValueError, match="image_latents must have the shape of sample"):
        unet(sample, t, **{**raw, "image_latents": raw["image_latents"][:, :, :, :-1]})
    with pytest.raises(ValueError, match="in_channels"):
        unet(sample[:, :3], t, **raw)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        unet(sample, t, **{**raw, "encoder_hidden_states": None})
    with pytest.raises(ValueError, match="image_embeddings must be"):
        unet(sample, t, **{**raw, "image_embeddings": raw["image_embeddings"][..., :-1]})
    with pytest.raises(ValueError, match="fps must have"):
        unet(sample, t, **{**raw, "fps": torch.tensor([8, 8, 8])})
    with pytest.raises(ValueError, match="timestep must"):
        unet(sample, torch.tensor([1, 2, 3]), **raw)
    condition = unet.encode_condition(**raw)
    with pytest.raises(ValueError, match="not both"):
        unet(sample, t, condition=condition, **raw)
    with pytest.raises(ValueError, match="does not match sample"):
        unet(sample[..., :-1], t, condition=condition)
    with pytest.raises(ValueError, match="a multiple of image_latents"):
        unet.encode_condition(**guidance_inputs(io, image_latent_copies=3))
    with pytest.raises(ValueError, match="does not match sample"):  # a shared condition takes B samples
        unet(torch.cat([sample] * 2), t, condition=unet.encode_condition(**guidance_inputs(io)))
    with pytest.raises(ValueError, match="not supported"):
        unet(sample, t, **raw, cross_attention_kwargs={"scale": 0.5})


def test_forward_runs_under_fake_tensors():
    """The forward has no data-dependent control flow: it runs under FakeTensorMode (shapes and dtypes only,
    no arithmetic), by the raw inputs and by a guidance condition (context for two groups, image latents once).
    A small config with every block kind; the op-by-op fake dispatch of the released size takes ~15 s."""
    with FakeTensorMode():
        unet = I2VGenXLUNet(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
                            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8)
        sample, latents = torch.randn(1, 4, 3, 8, 12), torch.randn(1, 4, 3, 8, 12)
        text, image = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
        plain = unet(sample, 981, fps=16, image_latents=latents, image_embeddings=image[:1],
                     encoder_hidden_states=text[:1]).sample
        condition = unet.encode_condition(fps=torch.tensor([16, 16]), image_latents=latents,
                                          image_embeddings=image, encoder_hidden_states=text)
        guided = unet(sample, torch.tensor(981), condition=condition).sample
    assert isinstance(guided, FakeTensor)
    assert plain.shape == (1, 4, 3, 8, 12) and guided.shape == (2, 4, 3, 8, 12)


def test_bad_configs_raise_clear_errors():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="one entry per level"):
            I2VGenXLUNet(block_out_channels=(32, 64))
        with pytest.raises(ValueError, match="attention_head_dim"):
            I2VGenXLUNet(attention_head_dim=48)
        with pytest.raises(ValueError, match="unknown block type"):
            I2VGenXLUNet(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock3D",))
