"""flowtrain's TarFlow against the released model: the same weights give the same numbers.

Builds apple/ml-tarflow's ``transformer_flow.Model`` from a clone you name, moves its
weights off their initial values, loads them into ``flowtrain.flows.tarflow.TarFlow``
(a renaming, nothing else), and prints the largest differences of z, the log-determinant
(the released one is a mean over dimensions; flowtrain's a sum) and the reverse pass.
The released LayerNorm runs in float32, so float32 differences near 1e-6 mean equal.

    git clone https://github.com/apple/ml-tarflow /tmp/ml-tarflow
    uv run python scripts/tarflow_released_check.py /tmp/ml-tarflow
"""

from __future__ import annotations

import sys

import torch

from flowtrain.flows.tarflow import TarFlow

SHAPE, PATCH, WIDTH, BLOCKS, LAYERS = (3, 8, 8), 2, 128, 4, 2  # head_dim 64 as released


def flowtrain_names(released: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """blocks.I.attn_blocks.J.mlp... -> transforms.(I + 1).conditioner.layers.J.feed_forward...
    (transforms[0] is the patchify step); the causal mask buffer is not a weight."""
    renamed = {}
    for name, value in released.items():
        _, block, rest = name.split(".", 2)
        if rest != "attn_mask":
            rest = rest.replace("attn_blocks", "layers").replace("mlp", "feed_forward")
            renamed[f"transforms.{int(block) + 1}.conditioner.{rest}"] = value
    return renamed


def main(clone: str) -> None:
    sys.path.insert(0, clone)
    import transformer_flow  # the released module

    torch.manual_seed(0)
    released = transformer_flow.Model(SHAPE[0], SHAPE[1], PATCH, WIDTH, BLOCKS, LAYERS)
    with torch.no_grad():
        for parameter in released.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    ours = TarFlow(SHAPE, patch_size=PATCH, width=WIDTH, blocks=BLOCKS,
                   layers_per_block=LAYERS, head_dim=64)
    ours.load_state_dict(flowtrain_names({k: v for k, v in released.state_dict().items()
                                          if k.startswith("blocks.")}))
    x = 2 * torch.rand(5, *SHAPE) - 1
    with torch.no_grad():
        z_released, _, log_det_released = released(x)
        z, log_det = ours(x)
        back_released = released.reverse(z_released.clone())
        back = ours.inverse(z)
    n_dims = x[0].numel()
    print(f"parameters: released {sum(p.numel() for p in released.parameters()):,}, "
          f"flowtrain {sum(p.numel() for p in ours.parameters()):,}")
    print(f"max |z - z_released|: {(released.patchify(z) - z_released).abs().max():.2e}")
    print(f"max |log_det - D * log_det_released|: "
          f"{(log_det - n_dims * log_det_released).abs().max():.2e}")
    print(f"max |inverse - reverse|: {(back - back_released).abs().max():.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
