"""Fake copies of the Waterbirds and CelebA datasets in their original on-disk formats (tiny images)."""

from __future__ import annotations

import numpy as np

WB_SIZES = {0: (10, 2, 2, 10), 1: (1, 1, 1, 1), 2: (3, 3, 3, 3)}  # split -> groups (y, place) = 00, 01, 10, 11


def color(i: int) -> tuple[int, int, int]:
    """The uniform RGB colour of fake image ``i``."""
    return (20 + 7 * i % 200, 200 - 5 * i % 180, 60 + 11 * i % 190)


def fake_waterbirds(root):
    """``waterbird_complete95_forest2water2/metadata.csv`` + uniform-colour JPEGs of varied sizes."""
    from PIL import Image

    d = root / "waterbird_complete95_forest2water2"
    rows, i = [], 0
    for split, sizes in WB_SIZES.items():
        for g, n in enumerate(sizes):
            for _ in range(n):
                rel = f"{1 + g // 2:03d}.Bird_{g // 2}/img_{i}.jpg"
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12 + i % 5, 10 + i % 3), color(i)).save(d / rel, quality=95)
                rows.append(f"{i + 1},{rel},{g // 2},{split},{g % 2}")
                i += 1
    (d / "metadata.csv").write_text("img_id,img_filename,y,split,place\n" + "\n".join(rows) + "\n")
    return rows


def fake_celeba(root, n=40):
    """``celeba/list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/*.jpg``
    (12x16 portrait images whose top/bottom 2 rows are red, cut off by the centre crop)."""
    from PIL import Image

    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    blond, male = rng.integers(0, 2, n), rng.integers(0, 2, n)
    split = np.array([0, 0, 0, 1, 2])[np.arange(n) % 5]
    names = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]
    lines = [str(n), " ".join(names)]
    for i in range(n):
        f = f"{i + 1:06d}.jpg"
        im = Image.new("RGB", (12, 16), color(i))
        im.paste((255, 0, 0), (0, 0, 12, 2))
        im.paste((255, 0, 0), (0, 14, 12, 16))
        im.save(d / "img_align_celeba" / f, quality=95)
        vals = [1, 2 * blond[i] - 1, 2 * male[i] - 1, -1]
        lines.append(f + "  " + " ".join(f"{v:2d}" for v in vals))
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {split[i]}\n" for i in range(n)))
    return blond, male, split

