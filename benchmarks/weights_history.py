"""TEMPO's meta weights against the real reward over a run's history (issue 12: what in TEMPO helps on pendulum).

``reweigh inspect-weights`` reads a run's *latest* checkpoint against its whole replay.  This script replays the
run's history: given copies of ``checkpoints/latest.pt`` taken while the run trained (files ``epNNN.pt`` in
``--history``, NNN = the number of replay episodes on disk when the copy was taken), it rebuilds for each copy the
run as it was — the same ``config.json``, that checkpoint, and the first NNN episode files of ``replay/`` — and runs
``recipes.dreamer.analysis.inspect_weights`` on it, so each row's weights and rewards are those of the replay the
weighter was training on then.  The copier used for docs/recipe-tempo.md (every 30 s, a copy whenever the
checkpoint's mtime changes):

    while true; do m=$(stat -c %Y RUN/checkpoints/latest.pt); if [ "$m" != "$(cat H/.m)" ]; then sleep 5; \
      cp RUN/checkpoints/latest.pt H/ep$(printf %03d $(ls RUN/replay | wc -l)).pt; echo $m > H/.m; fi; sleep 30; done

Usage:

    python benchmarks/weights_history.py --run RUN --history H [--sequences 64] [--out weights_history.json]

Prints one row per snapshot (episodes, share of rewarded steps, mean weight where r > 0 and r <= 0, Pearson and
Spearman r of weight vs reward, the weights' spread) and writes the rows as JSON (NaN as null).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def snapshot_view(run: Path, checkpoint: Path, episodes: int, into: Path) -> Path:
    """A run directory in ``into`` holding ``run``'s config, ``checkpoint`` as its latest, and its first ``episodes``
    replay files (symlinks, in the replay's own order: file names start with the episode index)."""
    (into / "checkpoints").mkdir(parents=True)
    (into / "replay").mkdir()
    (into / "config.json").write_text((run / "config.json").read_text())
    (into / "checkpoints" / "latest.pt").symlink_to(checkpoint.resolve())
    for f in sorted((run / "replay").iterdir())[:episodes]:
        (into / "replay" / f.name).symlink_to(f.resolve())
    return into


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a tempo run directory")
    ap.add_argument("--history", type=Path, required=True, help="a folder of epNNN.pt checkpoint copies")
    ap.add_argument("--sequences", type=int, default=64, help="replayed sequences per snapshot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON rows (default: HISTORY/weights_history.json)")
    args = ap.parse_args(argv)

    import torch

    from recipes.dreamer.analysis import inspect_weights

    torch.set_num_threads(1)
    snaps = sorted(
        (int(m.group(1)), p) for p in args.history.glob("ep*.pt") if (m := re.fullmatch(r"ep(\d+)\.pt", p.name))
    )
    if not snaps:
        raise SystemExit(f"no epNNN.pt files in {args.history}")
    rows = []
    print(f"{'episodes':>8} {'r>0':>6} {'w|r>0':>6} {'w|r<=0':>6} {'pearson':>8} {'spearman':>8} {'w std':>6}")
    for episodes, ckpt in snaps:
        with tempfile.TemporaryDirectory() as tmp:
            view = snapshot_view(args.run, ckpt, episodes, Path(tmp) / "run")
            with contextlib.redirect_stdout(io.StringIO()):
                out = inspect_weights(view, sequences=args.sequences, seed=args.seed)
        row = {"episodes": episodes, **out["by_reward"], "weight_std": out["summary"]["std"]}
        rows.append(row)
        print(
            f"{episodes:>8} {row['share_rewarded']:>6.1%} {row['mean_rewarded']:>6.3f} {row['mean_unrewarded']:>6.3f} "
            f"{row['pearson']:>+8.3f} {row['spearman']:>+8.3f} {row['weight_std']:>6.3f}"
        )
    out_path = args.out or args.history / "weights_history.json"
    strict = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    out_path.write_text(json.dumps({"run": str(args.run), "rows": strict}, indent=1, allow_nan=False))
    print(f"wrote {out_path}")
    return rows


if __name__ == "__main__":
    main()
