"""What a model reads from a batch and which superpixel graphs it is built for.

A model's registry entry (vigsp/models/registry.py) names the batch fields its ``forward`` takes
as keywords (the model class says the same in ``input_names``), and its arguments give the
superpixel method, segment count and node capacity. The data side follows from this: the
loader builds exactly these outputs, and ``load_config`` fills in or checks ``data.superpixel``
and ``data.max_nodes`` (vigsp/config/model_inputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Batch fields of a superpixel graph that a model can read; node_mask comes from the node counts.
GRAPH_INPUTS = ("label_maps", "node_features", "node_mask")
PATCH_MODEL_INPUTS = ("images",)
SUPERPIXEL_MODEL_INPUTS = ("images", *GRAPH_INPUTS)

__all__ = ["GRAPH_INPUTS", "PATCH_MODEL_INPUTS", "SUPERPIXEL_MODEL_INPUTS", "ModelInputs"]


@dataclass(frozen=True)
class ModelInputs:
    names: tuple[str, ...]
    """Batch fields the forward reads, as its keyword arguments (``images`` first)."""
    superpixel_method: str | None = None
    """``slic`` or ``grid``; None for models without superpixel graphs (patch models)."""
    n_segments: int | None = None
    max_nodes: int | None = None
    """Nodes per image the model is built for (the padded node count of its batches)."""

    @property
    def needs_superpixels(self) -> bool:
        return self.superpixel_method is not None

    @property
    def pipeline_outputs(self) -> tuple[str, ...]:
        """The DALI pipeline outputs these inputs come from (node_mask is built from node_counts)."""
        return tuple(n if n != "node_mask" else "node_counts" for n in self.names if n in GRAPH_INPUTS)
