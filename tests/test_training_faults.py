"""Bad training configs, damaged checkpoints and caches, a full disk while training (issue 25): one line naming
the file and key, or the right result; nothing partial left."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import micro_pipeline

from i2vgen.training.train import main

BASE = {"model": "weights/tiny-demo", "output_dir": "OUT"}


def train_cli(capsys, tmp_path, config: dict, *args) -> tuple[int, str]:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({key: str(tmp_path / "out") if value == "OUT" else value
                                for key, value in config.items()}))
    code = main(["--config", str(path), *map(str, args)])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize("change, message", [
    ({"learning_rate": -1e-4}, "learning_rate must be a number between 0 and inf, got -0.0001"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be at least 1, got 0"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of ['constant', 'cosine'], got 'linear'"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of ['no', 'bf16'], got 'fp8'"),
    ({"gradient_checkpointing": "block"}, "gradient_checkpointing must be one of [False, True, 'layer'], got 'block'"),
    ({"uncond_prob": 2.0}, "uncond_prob must be a number between 0 and 1, got 2.0"),
    ({"ema_decay": 5.0}, "ema_decay must be a number between 0 and 1, got 5.0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1, got 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be at least 1, got 0"),
    ({"num_clips": 0}, "num_clips must be at least 1, got 0"),
    ({"num_frames": 0}, "num_frames must be at least 1, got 0"),
    ({"num_threads": 0}, "num_threads must be at least 1, got 0"),
    ({"adam_betas": [2, 3]}, "adam_betas must be two numbers in [0, 1), got [2, 3]"),
    ({"device": "gpu"}, "device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps"),
    ({"directions": ["sideways"]}, "directions must be some of"),
    ({"lora": {"rank": 0}}, "lora.rank must be at least 1, got 0"),
    ({"lora": {"rank": 4, "colour": 1}}, "lora has no field 'colour'; its fields are"),
    ({"lora": 5}, "lora must be an object of LoRA fields ['alpha', 'dropout', 'rank', 'target_modules'] or null, got 5"),
    ({"model": None}, "model must be str, got null"),
])
def test_config_values_are_named(capsys, tmp_path, change, message):
    code, line = train_cli(capsys, tmp_path, BASE | change)
    assert code == 2 and line.startswith(f"i2vgen train: error: {tmp_path / 'train.json'}: "), line
    assert message in line and not (tmp_path / "out").exists(), line


def test_missing_model_key_and_output_dir_that_is_a_file(capsys, tmp_path):
    code, line = train_cli(capsys, tmp_path, {"output_dir": "OUT"})
    assert (code, line) == (2, f"i2vgen train: error: {tmp_path / 'train.json'}: missing keys ['model']")
    (tmp_path / "out").write_text("a file")
    code, line = train_cli(capsys, tmp_path, BASE)
    assert code == 2 and line.endswith(f"output_dir {tmp_path / 'out'} is a file; give a folder")


def test_until_must_be_a_step(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train_cli(capsys, tmp_path, BASE, "--until", "-1")
    assert exit_info.value.code == 2
    assert "argument --until: must be a step number, at least 1, got '-1'" in capsys.readouterr().err


# ---- at run time: the model, checkpoints, caches, LoRA targets ----

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return micro_pipeline(tmp_path_factory.mktemp("micro"))


def small(base, **changes) -> dict:
    return {"model": str(base), "output_dir": "OUT", "num_clips": 2, "batch_size": 1, "max_steps": 2,
            "checkpoint_every": 1, "keep_checkpoints": 1, "lr_warmup_steps": 1} | changes


def test_missing_model_folder_and_unknown_lora_target(capsys, tmp_path, base):
    code, line = train_cli(capsys, tmp_path, small(base, model=str(tmp_path / "nothing")))
    assert (code, line) == (1, f"i2vgen train: error: model folder not found: {tmp_path / 'nothing'}")
    code, line = train_cli(capsys, tmp_path, small(base, lora={"target_modules": ["to_nothing"]}))
    assert code == 1 and line.startswith("i2vgen train: error: lora target module 'to_nothing' matches no module")


@pytest.mark.parametrize("damage", ["state", "weights", "index", "empty"])
def test_damaged_checkpoints_are_named(capsys, tmp_path, base, damage):
    assert train_cli(capsys, tmp_path, small(base), "--until", "1")[0] == 0
    checkpoint = tmp_path / "out" / "checkpoint-000001"
    if damage == "state":
        (checkpoint / "training_state.json").write_bytes(b"garbage")
    elif damage == "weights":
        weights = checkpoint / "__0_0.distcp"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "index":  # a pickle of something else than DCP's index: refused, never run
        (checkpoint / ".metadata").write_bytes(pickle.dumps(subprocess.Popen))
    else:
        for path in sorted(checkpoint.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    code = main(["--config", str(tmp_path / "train.json")])  # the config train_cli wrote
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "metadata is not found" not in err  # DCP's own logging is held back
    assert code == 1 and line.startswith(f"i2vgen train: error: cannot resume from {checkpoint} ("), line
    assert line.endswith("remove that folder to resume from the one before it, or start again in an empty output_dir")
    if damage == "index":
        assert "subprocess.Popen is not part of a checkpoint's index" in line, line


def test_a_resume_with_another_global_batch_says_the_order_changes(capsys, tmp_path, base):
    assert train_cli(capsys, tmp_path, small(base), "--until", "1")[0] == 0
    (tmp_path / "twice.json").write_text(json.dumps(small(base, output_dir=str(tmp_path / "out"), batch_size=2)))
    assert main(["--config", str(tmp_path / "twice.json")]) == 0
    assert (f"{tmp_path / 'out' / 'checkpoint-000001'}'s run had a global batch of 1 samples, this one has 2: the "
            f"clips follow another order from here (sampler.py)") in capsys.readouterr().err


def test_a_checkpoint_of_the_earlier_format_is_one_line(capsys, tmp_path, base):
    checkpoint = tmp_path / "out" / "checkpoint-000001"
    (checkpoint / "unet").mkdir(parents=True)
    (checkpoint / "training_state.pt").write_bytes(b"")
    code, line = train_cli(capsys, tmp_path, small(base))
    assert code == 2 and line == (f"i2vgen train: error: {checkpoint} is a checkpoint of an earlier i2vgen "
                                  f"(training_state.pt, one file by rank 0); this one resumes "
                                  f"torch.distributed.checkpoint folders: finish that run with the version that "
                                  f"wrote it, or start again in an empty output_dir"), line


def test_garbage_clip_pool_is_encoded_again(capsys, tmp_path, base):
    assert train_cli(capsys, tmp_path, small(base, max_steps=1))[0] == 0
    pool = next((tmp_path / "out").glob("clip_pool*.pt"))
    pool.write_bytes(b"not a pickle")
    for checkpoint in (tmp_path / "out").glob("checkpoint-*"):
        import shutil

        shutil.rmtree(checkpoint)
    code = train_cli(capsys, tmp_path, small(base, max_steps=1))[0]
    assert code == 0 and pool.stat().st_size > 100


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    from i2vgen.training.train import main
    sys.exit(main(sys.argv[2:]))
""")


def test_full_disk_while_training_leaves_nothing_partial(tmp_path, base):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(small(base, output_dir=str(tmp_path / "out"))))
    # 200 kB: config.json and the clip pool fit, a checkpoint's UNet (589 kB, twice with its EMA) does not
    result = subprocess.run([sys.executable, "-c", FULL_DISK, "200000", "--config", str(config)], capture_output=True,
                            text=True, timeout=300, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(
        f"i2vgen train: error: cannot write {tmp_path / 'out' / 'checkpoint-000001'} (rank 0: "), last
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert not [name for name in left if name.startswith(".")] and "checkpoint-000001" not in left, left
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model"] == str(base)
