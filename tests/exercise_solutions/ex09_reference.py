from minorpo.logprobs import token_logps


def chunked_token_logps(hidden, weight, targets, chunk_size):
    return token_logps(hidden[None], weight, targets[None], chunk_size)[0]
