#!/usr/bin/env python3
"""Copy the first N frames of an extended XYZ file as text, byte for byte (no re-serialisation).

Used to make src/lpmace/datasets/3bpa/test_300K.xyz:
    scripts/copy_xyz_frames.py /path/to/3bpa/test_300K.xyz src/lpmace/datasets/3bpa/test_300K.xyz 300
"""
import sys


def main(source: str, target: str, count: int) -> None:
    with open(source) as f:
        lines = f.readlines()
    out, i, copied = [], 0, 0
    while i < len(lines) and copied < count:
        n_atoms = int(lines[i])
        out.extend(lines[i : i + n_atoms + 2])
        i += n_atoms + 2
        copied += 1
    if copied < count:
        sys.exit(f"{source}: only {copied} frames, asked for {count}")
    with open(target, "w") as f:
        f.writelines(out)
    print(f"{target}: {copied} frames")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
