"""A small training config over the first embedded 3BPA configurations (shared by the train tests)."""

from lpmace.train import load_train_config

SMALL = (
    "model.channels=8", "model.max_L=0", "model.correlation=2", "model.max_ell=2", "model.radial_mlp=[16]",
    "model.num_bessel=6", "model.r_max=4.0", "batch_size=4", "progress=false", "lr=0.01",
)


def small_config(tmp_path, *extra, n_train=40):
    # A 40-configuration training file keeps a CPU epoch to about a second.
    from lpmace import datasets

    lines = datasets.path("3bpa/train_300K.xyz").read_text().splitlines(keepends=True)
    frames, i = [], 0
    while len(frames) < n_train:
        n = int(lines[i])
        frames.append("".join(lines[i : i + n + 2]))
        i += n + 2
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = tmp_path / "train.xyz"
    train.write_text("".join(frames))
    return load_train_config(None, SMALL + (f"train_file={train}", "valid_fraction=0.25",
                                            "test_files=[]", f"output_dir={tmp_path / 'run'}") + extra)
