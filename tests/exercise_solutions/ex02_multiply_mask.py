def sequence_logps(token_logps, mask):
    return (token_logps * mask).sum(-1) / mask.sum(-1)  # 0 * -inf = NaN; an empty row gives 0/0
