"""minorpo: ORPO (Odds Ratio Preference Optimization, Hong, Lee & Thorne, EMNLP 2024) from scratch.

Read in this order: model.py (the decoder), loader.py (weights in and out), tokenizer.py,
logprobs.py and loss.py (the objective), data.py, lora.py, train.py. The README has a file tree.
"""

__version__ = "0.1.0"
