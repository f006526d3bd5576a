def sequence_logps(token_logps, mask):
    return (token_logps * mask).sum(-1) / token_logps.shape[-1]  # divides by T, pads included
