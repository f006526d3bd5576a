import torch

from minorpo.batches import collate_shared_prompt
from minorpo.data import TokenizedPair


def shared_prompt_layout(prompt_lengths, chosen_lengths, rejected_lengths, T):
    pairs = [TokenizedPair([1] * p, [2] * c, [3] * r) for p, c, r in zip(prompt_lengths, chosen_lengths, rejected_lengths)]
    batch = collate_shared_prompt(pairs, 0, pad_to_multiple_of=T)  # every row fits in T: padded to exactly T
    return batch["position_ids"], batch["attention_mask"]
