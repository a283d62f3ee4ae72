"""Write ``samples/checkpoint.pt``, the small checkpoint the README's main job converts.

A nested state dict as training code saves it: an OrderedDict of weights in several dtypes
(bfloat16 and float8 included), a list of tensors, and plain values (step, name).
Run from the repository root: ``python samples/make_samples.py``.
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch


def main() -> None:
    """Write the sample checkpoint next to this script."""
    g = torch.Generator().manual_seed(0)
    model = collections.OrderedDict(
        [
            ("embed.weight", torch.randn(16, 8, generator=g)),
            ("encoder.0.weight", torch.randn(8, 8, generator=g).to(torch.bfloat16)),
            ("encoder.0.bias", torch.zeros(8, dtype=torch.bfloat16)),
            ("encoder.1.weight", torch.randn(8, 8, generator=g).to(torch.float16)),
            ("head.weight", torch.randn(4, 8, generator=g).to(torch.float8_e4m3fn)),
            ("head.scale", torch.tensor(0.125)),
        ]
    )
    checkpoint = {
        "model": model,
        "optimizer_steps": [torch.arange(3), torch.ones(2, dtype=torch.int32)],
        "step": 1200,
        "run": "sample",
    }
    torch.save(checkpoint, Path(__file__).with_name("checkpoint.pt"))


if __name__ == "__main__":
    main()
