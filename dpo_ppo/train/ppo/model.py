"""The policy with its value head, and the rollout batch it reads.

Batch layout.  A rollout is one tensor ``[prefix (left-padded to P) | completion (right-padded to
C)]``, so completion token ``t`` of every row sits at column ``P + t`` and is predicted from column
``P + t - 1``; all per-token tensors are ``[N, C]`` with ``mask`` marking real completion tokens
(EOS included, padding after it excluded).  Position ids come from the attention mask, exactly as
``generate`` sets them for left-padded prompts.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from dpo_ppo.train.sampling import model_device, pad_batch


class PolicyWithValue(nn.Module):
    """The policy LM plus a scalar value head.

    ``shared``: the head reads the policy's final hidden state (one trunk pass gives logits and
    values).  ``separate``: the head reads its own trainable copy of the reference trunk.
    """

    def __init__(self, policy, ref_model, value_model: str = "shared"):
        super().__init__()
        self.policy = policy
        self.value_trunk = None
        if value_model == "separate":
            self.value_trunk = copy.deepcopy(ref_model.base_model).requires_grad_(True)
        elif value_model != "shared":
            raise ValueError(f"value_model must be shared or separate, got {value_model!r}")
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1).to(model_device(policy))
        nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.value_head.bias)

    def value_modules(self) -> nn.ModuleList:
        """What the value loss trains besides the policy: the head, and the trunk when separate."""
        return nn.ModuleList([m for m in (self.value_trunk, self.value_head) if m is not None])

    def value_state_dict(self) -> dict:
        state = {"head": self.value_head.state_dict()}
        if self.value_trunk is not None:
            state["trunk"] = self.value_trunk.state_dict()
        return state

    def load_value_state_dict(self, state: dict) -> None:
        self.value_head.load_state_dict(state["head"])
        if self.value_trunk is not None:
            self.value_trunk.load_state_dict(state["trunk"])

    def forward(self, batch: dict, temperature: float = 1.0, with_values: bool = True):
        """Logits [n, C, V] (divided by temperature) for the completion positions, and values [n, C]."""
        hidden = completion_hidden(self.policy, batch)
        logits = self.policy.get_output_embeddings()(hidden).float() / temperature
        values = None
        if with_values:
            if self.value_trunk is not None:
                hidden = completion_hidden(self.value_trunk, batch, is_trunk=True)
            with torch.autocast(device_type=hidden.device.type, enabled=False):  # a float32 head under autocast too
                values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values


def completion_hidden(model, batch: dict, is_trunk: bool = False) -> torch.Tensor:
    """Final hidden states [n, C, H] at the positions that predict the completion tokens."""
    trunk = model if is_trunk else model.base_model
    out = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"])
    P, C = batch["prefix_width"], batch["mask"].shape[1]
    return out.last_hidden_state[:, P - 1: P + C - 1]


def make_batch(queries: list[list[int]], completions: list[list[int]], pad_id: int, device) -> dict:
    """[left-padded prefix | right-padded completion] ids, attention mask, position ids, mask."""
    q_ids, q_mask = pad_batch(queries, pad_id, left=True)
    c_ids, c_mask = pad_batch(completions, pad_id, left=False)
    attention_mask = torch.cat([q_mask, c_mask], 1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": torch.cat([q_ids, c_ids], 1).to(device),
            "attention_mask": attention_mask.to(device), "position_ids": position_ids.to(device),
            "completion_ids": c_ids.to(device), "mask": c_mask.float().to(device),
            "prefix_width": q_ids.shape[1]}


def select(batch: dict, idx) -> dict:
    """Rows ``idx`` of a batch (tensors indexed, other entries kept)."""
    return {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}


