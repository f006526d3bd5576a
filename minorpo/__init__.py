"""minorpo: ORPO (Odds Ratio Preference Optimization, Hong, Lee & Thorne, EMNLP 2024) from scratch.

Read in this order: models/llama.py (the decoder), data.py (rows -> token ids), batches.py (layouts and each
convention's targets), logprobs.py (Eq. 3), loss.py (the objective, Eq. 4-10), forward.py (a batch through the model
to the loss's inputs), lora.py, train.py (the loop). The machinery is in models/, fast/, hf/, run/ and tools/; the README's
Files section lists them.
"""

__version__ = "0.1.0"
