"""The named choices of `lpmace bench` — its sections and its random models' sizes — as plain data
without torch, so that `lpmace --help` and argument errors list them without importing the benchmark."""

__all__ = ["ANCHOR", "EXPERIMENTS", "MATRIX", "SECTIONS", "SIZES"]

# measured for every engine (code x backend x precision); the default run is these but time-to-accuracy
MATRIX = ("train", "infer", "roofline", "accuracy", "equivariance", "scaling", "md", "time-to-accuracy")
# the seed's experiments: run only when named
EXPERIMENTS = ("quantize", "species-rank", "progressive-correlation", "precision-schedule", "startup")
SECTIONS = MATRIX + EXPERIMENTS

# MACEConfig hyperparameters of the shared/ANCHORS.md model (mace-torch's default MACE); sizes vary L.
# A size without atomic_numbers knows H, C, N, O and the elements of --data; one with them knows just those.
ANCHOR = dict(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, channels=128, correlation=(3, 3),
              num_interactions=2, readout_mlp=16, radial_mlp=(64, 64, 64), avg_num_neighbors=15.0)
SIZES = {
    "tiny": dict(ANCHOR, channels=8, max_L=1, max_ell=2, correlation=(2, 2), radial_mlp=(16, 16), readout_mlp=8),
    "small": dict(ANCHOR, max_L=0),
    "medium": dict(ANCHOR, max_L=1),
    "L2": dict(ANCHOR, max_L=2),
    # MACE-MP-0 medium: 89 elements (H..Ac), r_max 6 Å, 10 Bessel functions, ~61 neighbours per atom
    "mp": dict(ANCHOR, max_L=1, r_max=6.0, num_bessel=10, avg_num_neighbors=61.0, atomic_numbers=tuple(range(1, 90))),
}
# MPA-0 / OMAT-0 medium: mp's shape with density-normalised interactions, ZBL repulsion and the Agnesi transform
SIZES["mpa"] = dict(SIZES["mp"], first_interaction="density", interaction="density_residual", pair_repulsion=True,
                    distance_transform="agnesi")
